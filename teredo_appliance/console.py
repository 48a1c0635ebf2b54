"""The console's Python prompt: the admin commands, and their reports laid out for people.

The console runs in the reactor thread, so no command may block: `reload()` starts the
reload and returns at once; its summary is printed when the reload's Deferred fires,
above a redrawn prompt. A session whose input ends (EOF, Ctrl-D, exit()) stays until
such pending answers are printed, so `echo 'reload()' | ssh -tt ...` shows the summary.

Typing must not stall the roles either. Manhole recolours the whole line on every
keystroke, which is quadratic in a pasted line (16 KB took 3 s, 1 MB froze the daemon).
So plain text reaches the prompt in runs, one redraw per received chunk, and a line is
at most MAX_LINE_LENGTH characters: a longer one is discarded with a message and counted.
What cannot be guarded: a Python command itself runs in the reactor thread, so a slow
one (a long loop, a huge repr) holds every role until it returns.
"""

from __future__ import annotations

import re
import tokenize
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.conch.insults.insults import ServerProtocol
from twisted.conch.manhole import ColoredManhole, lastColorizedLine
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from teredo_appliance.view import ApplianceView

ACRONYMS = {"nat": "NAT", "mtu": "MTU", "ip": "IP", "ipv4": "IPv4", "ipv6": "IPv6", "tun": "TUN",
            "udp": "UDP", "ra": "RA", "rs": "RS", "ssh": "SSH", "id": "ID"}
RULE = "-" * 64
LABEL_WIDTH = 24  # like `netsh interface teredo show state`: one aligned column of labels
NESTED_ROWS = 10  # rows of a list shown inside status(); peers() shows whole tables
PEER_ROWS = 50
MAX_LINE_LENGTH = 4096  # characters in one input line; a longer paste is a mistake, not a command
ESC = b"\x1b"  # starts a terminal escape sequence (arrow keys and the like)
PLAIN_TEXT = re.compile(rb"[\x20-\x7e]+")  # printable ASCII: inserted as typed, no key handler

HELP = """\
Teredo appliance console: a Python prompt inside the running daemon.
  status()              per-role report: state, addresses, NAT type, peers, counters
  peers(role)           peer table of 'relay' or 'client' (first {rows} rows; limit=0: all);
                        peers() shows every role's table
  reload()              re-read {path} and apply what changed; prints the summary when done
  check()               what reload() would do now (a dry run: nothing changes)
  drain(role, grace)    withdraw the 'relay' route or 'server' anycast /32s; drained after grace s
  undrain(role)         announce again
  help()                this list
  exit()                leave (Ctrl-D too)
  appliance             the root service: appliance.status(), appliance.reload() -> Deferred
  config                the configuration in force (frozen dataclasses)
"""


def label(key: str) -> str:
    """`nat_type` -> `NAT Type`: status keys read as netsh-style labels."""
    return " ".join(ACRONYMS.get(word.lower(), word.capitalize()) for word in key.replace("-", "_").split("_"))


def scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(scalar(v) for v in value) or "-"
    if isinstance(value, Mapping):  # only empty ones get here: non-empty dicts are blocks
        return "-"
    return str(value)


def _row(item: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={scalar(value)}" for key, value in item.items())


def _is_block(value: Any) -> bool:
    return (isinstance(value, Mapping) and bool(value)) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value))


def render_fields(fields: Mapping[str, Any], indent: str = "", pretty: bool = True) -> list[str]:
    """Aligned `Label : value` lines; dicts become indented blocks, lists of dicts short rows."""
    name = label if pretty else str
    width = max([LABEL_WIDTH - len(indent), *(len(name(key)) for key in fields)])
    lines = []
    # Scalars first, then the blocks (counters, lists of records), so labels stay in one column.
    for key, value in sorted(fields.items(), key=lambda item: _is_block(item[1])):
        if isinstance(value, Mapping) and value:
            lines.append(f"{indent}{name(key)}")
            lines += render_fields(value, indent + "    ", pretty=False)
        elif _is_block(value):
            lines.append(f"{indent}{name(key):<{width}} : {len(value)}")
            lines += [f"{indent}    {_row(item)}" for item in value[:NESTED_ROWS]]
            if len(value) > NESTED_ROWS:
                lines.append(f"{indent}    ... {len(value) - NESTED_ROWS} more")
        else:
            lines.append(f"{indent}{name(key):<{width}} : {scalar(value)}")
    return lines


def render_status(report: Mapping[str, Mapping[str, Any]]) -> str:
    """One block per running component, whatever keys its status() carries."""
    if not report:
        return "nothing is running"
    lines = []
    for name, fields in report.items():
        lines += [RULE, *render_fields({"role": name, **{k: v for k, v in fields.items() if k != "role"}})]
    return "\n".join([*lines, RULE])


def render_peers(table: Mapping[str, Any], show_all: str = "peers({role!r}, limit=0)") -> str:
    """A peer table (Appliance.peers) with one column per key any listed peer has, and the
    true total even when only the first rows were asked for; `show_all` says how to see all."""
    role, shown, total = table["role"], table["peers"], table["total"]
    if not shown:
        return f"{role}: {total or 'no'} peer(s)"
    columns = list(dict.fromkeys(key for peer in shown for key in peer))
    cells = [[scalar(peer.get(c)) for c in columns] for peer in shown]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [f"{role}: {total} peer(s)",
             "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    if len(shown) < total:
        lines.append(f"... {total - len(shown)} more: {show_all.format(role=role)} lists all")
    return "\n".join(lines)


def render_summary(result: Mapping[str, list[str]]) -> str:
    """The reload summary, one outcome per line; several errors line up under each other."""
    lines = []
    for key in ("started", "stopped", "restarted", "reconfigured", "unchanged", "restored", "errors"):
        if key in ("reconfigured", "restored") and not result.get(key):
            continue
        values = result.get(key) or ["-"]
        separator = "\n" + " " * 12 if key == "errors" else ", "
        lines.append(f"{key:<10}: {separator.join(values)}")
    return "\n".join(lines)


def render_check(result: Mapping[str, list[str]]) -> str:
    """The dry run's answer: the actions first, then one line per change, warning and error."""
    actions = ("start", "stop", "restart", "reconfigure")
    lines = [f"{'would ' + key if key in actions else key:<13}: {', '.join(result.get(key, [])) or '-'}"
             for key in (*actions, "unchanged") if key != "reconfigure" or result.get(key)]
    for key in ("changes", "warnings", "errors"):
        lines += [f"{key:<13}: {result[key][0] if result[key] else '-'}"]
        lines += [" " * 15 + line for line in result[key][1:]]
    if not result["errors"]:
        lines.append("reload() would apply this" if result["changes"] else "reload() would change nothing")
    return "\n".join(lines)


class ConsoleTerminal(ServerProtocol):
    """The terminal parser, handing runs of text to the prompt at once instead of byte by byte.

    Escape sequences (arrow keys...) still go through the stock byte-wise parser.
    """

    def dataReceived(self, data: bytes) -> None:
        position, end = 0, len(data)
        while position < end:
            if self.state == b"data":
                escape = data.find(ESC, position)
                stop = end if escape < 0 else escape
                if stop > position:
                    self.terminalProtocol.textReceived(data[position:stop])
                    position = stop
                    continue
            super().dataReceived(data[position:position + 1])
            position += 1


class ConsoleManhole(ColoredManhole):
    """One admin session: a Python prompt whose namespace drives the appliance."""

    log = Logger()

    def __init__(self, appliance: ApplianceView, counters: Counter[str] | None = None) -> None:
        super().__init__()
        self.appliance = appliance
        self.counters: Counter[str] = Counter() if counters is None else counters
        self._overlong = False  # the line passed MAX_LINE_LENGTH: drop input up to the next Enter
        self._running_line = False  # output now belongs inline, before the next prompt
        self._pending = 0  # answers still to print (reloads in progress)
        self._ending = False  # input is over: close once nothing is pending
        self._closed = False

    def connectionMade(self) -> None:
        self.namespace = {
            "appliance": self.appliance,
            "config": self.appliance.config,
            "status": self.status,
            "peers": self.peers,
            "reload": self.reload,
            "check": self.check,
            "drain": self.drain,
            "undrain": self.undrain,
            "help": self.help,
            "exit": self.exit,
            "quit": self.exit,  # the builtins would raise SystemExit inside the daemon
        }
        super().connectionMade()
        self.say("Teredo appliance console; help() lists the commands.")

    def connectionLost(self, reason: Failure) -> None:
        self._closed = True
        super().connectionLost(reason)

    def terminalSize(self, width: int, height: int) -> None:
        # Record only: the stock handler clears the screen on every window resize.
        self.width, self.height = width, height

    def lineReceived(self, line: bytes) -> None:
        self.namespace["config"] = self.appliance.config  # a reload may have replaced it
        self._running_line = True
        try:
            super().lineReceived(line)
        finally:
            self._running_line = False
        self._close_when_done()

    # -- input: runs of text, bounded lines ------------------------------------------------

    def textReceived(self, text: bytes) -> None:
        """A chunk of typed or pasted input: plain runs are inserted with one redraw each."""
        position = 0
        for run in PLAIN_TEXT.finditer(text):
            self._keys(text[position:run.start()])
            if self._closed:
                return
            self._insert(run.group())
            position = run.end()
        self._keys(text[position:])

    def _keys(self, keys: bytes) -> None:
        for index in range(len(keys)):
            if self._closed:
                return
            self.keystrokeReceived(keys[index:index + 1], None)

    def _insert(self, run: bytes) -> None:
        if self._overlong:
            return
        if len(self.lineBuffer) + len(run) > MAX_LINE_LENGTH:
            self._discard_line()
            return
        before = self.lineBufferIndex
        chars = [run[i:i + 1] for i in range(len(run))]
        replaced = 0 if self.mode == "insert" else len(chars)
        self.lineBuffer[before:before + replaced] = chars
        self.lineBufferIndex += len(chars)
        self._redraw(before)

    def _redraw(self, cursor: int) -> None:
        """Rewrite the prompt and the coloured line, the cursor having been at `cursor`."""
        try:
            line = lastColorizedLine(self.getSource())
        except tokenize.TokenError:
            line = b"".join(self.lineBuffer)
        self.terminal.eraseLine()
        self.terminal.cursorBackward(len(self.ps[self.pn]) + cursor)
        self.terminal.write(self.ps[self.pn] + line)
        if len(self.lineBuffer) > self.lineBufferIndex:
            self.terminal.cursorBackward(len(self.lineBuffer) - self.lineBufferIndex)

    def characterReceived(self, ch: bytes, moreCharactersComing: bool) -> None:
        if self._overlong:
            return
        if len(self.lineBuffer) >= MAX_LINE_LENGTH:
            self._discard_line()
            return
        super().characterReceived(ch, moreCharactersComing)

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        # Keys the prompt has no use for (bytes of non-ASCII text, function keys) are
        # ignored quietly: the stock handler logs a warning for each one.
        if keyID in self.keyHandlers or keyID in self._printableChars:
            super().keystrokeReceived(keyID, modifier)

    def _discard_line(self) -> None:
        """Drop the line being typed and whatever follows it up to the next Enter."""
        self._overlong = True
        self.counters["input.line_too_long"] += 1
        self.lineBuffer, self.lineBufferIndex = [], 0
        self.terminal.nextLine()
        self.terminal.write(f"input line longer than {MAX_LINE_LENGTH} characters: "
                            "discarded up to the next Enter".encode())
        self.terminal.nextLine()

    def handle_RETURN(self) -> None:
        if self._overlong:
            self._forget_statement()
            self.drawInputLine()
        else:
            super().handle_RETURN()

    def handle_INT(self) -> None:
        self._overlong = False
        super().handle_INT()

    def _forget_statement(self) -> None:
        """Nothing of a statement that had an overlong line runs: not its other lines either."""
        self._overlong = False
        self.interpreter.resetBuffer()
        self.pn = 0
        self.lineBuffer, self.lineBufferIndex = [], 0

    # -- output and the end of a session ---------------------------------------------------

    def say(self, text: str) -> None:
        """Print to this session: inline while a command runs, else above a redrawn prompt."""
        if not self._closed:
            self.addOutput(text.rstrip("\n").encode("utf-8") + b"\n", not self._running_line)

    def hold(self, d: Deferred[Any]) -> None:
        """Keep the session open until `d` has fired (and printed its answer)."""
        self._pending += 1

        def release(result: Any) -> Any:
            self._pending -= 1
            self._close_when_done()
            return result

        d.addBoth(release)

    def input_ended(self) -> None:
        """EOF from the client, Ctrl-D or exit(): leave once pending answers are printed."""
        self._ending = True
        self._close_when_done()

    def handle_QUIT(self) -> None:
        self.input_ended()

    def _close_when_done(self) -> None:
        if self._ending and not self._pending and not self._running_line and not self._closed:
            self._closed = True
            self.terminal.loseConnection()

    # -- commands --------------------------------------------------------------------------

    def status(self) -> None:
        """Per-role report: state, addresses, NAT type, peers, counters."""
        self.say(render_status(self.appliance.status()))

    def peers(self, role: str | None = None, limit: int = PEER_ROWS) -> None:
        """The peer table of one role, or of every running role."""
        roles = [role] if role is not None else list(self.appliance.roles())
        for name in roles:
            try:
                self.say(render_peers(self.appliance.peers(name, limit if limit > 0 else None)))
            except LookupError as error:
                self.say(str(error))

    def reload(self) -> None:
        """Start a reload; its summary is printed when it completes (the prompt stays usable)."""
        self.say(f"reloading {self.appliance.config_path} ...")
        d = self.appliance.reload()
        d.addCallbacks(lambda result: self.say(render_summary(result)), self._reload_failed)
        self.hold(d)

    def check(self) -> None:
        """What reload() would do with the file as it is now; changes nothing."""
        self.say(render_check(self.appliance.check()))

    def drain(self, role: str, grace: float | None = None) -> None:
        """Withdraw now; the result is printed when the grace is over (the prompt stays usable)."""
        try:
            d = self.appliance.drain(role, grace)
        except LookupError as error:
            self.say(str(error.args[0]))
            return
        self.say(f"{role}: withdrawn, serving existing peers ...")
        d.addCallback(lambda result: self.say(f"{role}: {result['state']}"))
        self.hold(d)

    def undrain(self, role: str) -> None:
        try:
            self.say(f"{role}: {self.appliance.undrain(role)['state']}")
        except LookupError as error:
            self.say(str(error.args[0]))

    def _reload_failed(self, failure: Failure) -> None:
        self.log.failure("console reload failed", failure)
        self.say(f"reload failed: {failure.getErrorMessage()}")

    def help(self) -> None:
        self.say(HELP.format(path=self.appliance.config_path, rows=PEER_ROWS))

    def exit(self) -> None:
        self.input_ended()
