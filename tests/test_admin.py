"""The SSH console: who may log in, the host key, the session's survival, and a real OpenSSH session.

The last class drives the console with the OpenSSH `ssh` client in a subprocess, so key
exchange, public-key-only authentication and the pty handling are the real thing.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
from collections import Counter
from typing import Any

from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.manhole import lastColorizedLine
from twisted.conch.ssh import keys
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ConnectionDone, ProcessDone
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from teredo_appliance.admin import (
    EXEC_REFUSAL,
    AuthorizedKeys,
    ConsoleError,
    ConsoleRealm,
    ManholeService,
    load_authorized_keys,
    load_or_create_host_key,
)
from teredo_appliance.appliance import Appliance, StartError
from teredo_appliance.config_model import LogConfig, ManholeConfig
from teredo_appliance.console import MAX_LINE_LENGTH, render_peers, render_status, render_summary
from teredo_appliance.loglevel import LogSink
from teredo_appliance.sshserver import PREAUTH_MAX_BUFFER, fingerprint
from tests.test_appliance import RELAY, RELAY_BIGGER, SERVER, ScriptedLoader, World, make_config

NOBODY = 65534
HEARTBEAT = 0.01  # seconds between the ticks that show the reactor is running
HELPER_FDS = 6  # the helper process's stdin, stdout and stderr pipes, and what the reactor keeps for it
ANSI = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z]|[cDEM78])")


def public_line(comment: str = "admin@test") -> bytes:
    key = keys.Key(Ed25519PrivateKey.generate())
    return key.public().toString("openssh") + b" " + comment.encode()


def capture_warnings(case: SynchronousTestCase) -> list[str]:
    """Formatted log events at warn or above, from now until the end of the test."""
    loud: list[str] = []

    def observe(event: dict) -> None:
        if event["log_level"] >= LogLevel.warn:
            loud.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return loud


def open_fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def plain(output: bytes) -> str:
    """Terminal output without escape sequences or carriage returns."""
    return ANSI.sub(b"", output).replace(b"\r", b"").decode("utf-8", "replace")


class KeyFiles:
    """A temporary directory with an authorized_keys file (mode 0600) and a host key path."""

    def __init__(self, case: SynchronousTestCase, *lines: bytes) -> None:
        self.dir = case.mktemp()
        os.makedirs(self.dir)
        self.authorized_keys = os.path.join(self.dir, "authorized_keys")
        self.host_key = os.path.join(self.dir, "var", "ssh_host_ed25519_key")
        self.write(*lines)

    def write(self, *lines: bytes, mode: int = 0o600) -> None:
        with open(self.authorized_keys, "wb") as f:
            f.write(b"".join(line + b"\n" for line in lines))
        os.chmod(self.authorized_keys, mode)

    def config(self, listen: str = "tcp:0:interface=127.0.0.1", **limits: Any) -> ManholeConfig:
        return ManholeConfig(listen=listen, authorized_keys=self.authorized_keys, host_key=self.host_key, **limits)


class AuthorizedKeysTests(SynchronousTestCase):
    def test_missing_file_is_refused(self) -> None:
        path = self.mktemp()
        with self.assertRaises(ConsoleError) as caught:
            load_authorized_keys(path)
        self.assertEqual(str(caught.exception), f"manhole: authorized_keys file {path} does not exist "
                                                "(list the administrators' public keys in it, one per line)")

    def test_file_without_a_valid_key_is_refused(self) -> None:
        for lines in [(), (b"# only a comment", b""), (b"not a key", b'from="10.0.0.1" ' + public_line())]:
            files = KeyFiles(self, *lines)
            with self.assertRaises(ConsoleError) as caught:
                load_authorized_keys(files.authorized_keys)
            self.assertEqual(str(caught.exception),
                             f"manhole: authorized_keys file {files.authorized_keys} lists no valid public key "
                             "(expected lines like 'ssh-ed25519 AAAA... admin@host')")

    def test_file_writable_by_group_or_others_is_refused(self) -> None:
        for mode in (0o620, 0o602, 0o666):
            files = KeyFiles(self, public_line())
            os.chmod(files.authorized_keys, mode)
            with self.assertRaises(ConsoleError) as caught:
                load_authorized_keys(files.authorized_keys)
            self.assertEqual(str(caught.exception),
                             f"manhole: authorized_keys file {files.authorized_keys} is writable by group or "
                             f"others (mode {mode:04o}); run: chmod go-w {files.authorized_keys}")

    def test_valid_keys_are_read_and_other_lines_ignored(self) -> None:
        good = [public_line("alice"), public_line("bob")]
        files = KeyFiles(self, b"# admins", good[0], b"garbage", b'command="x" ' + public_line(), good[1])
        os.chmod(files.authorized_keys, 0o644)  # world-readable is fine, writable is not
        found = load_authorized_keys(files.authorized_keys)
        self.assertEqual(found, tuple(keys.Key.fromString(line) for line in good))

    def test_any_user_name_is_accepted_with_a_listed_key(self) -> None:
        listed = keys.Key.fromString(public_line())
        self.assertEqual(AuthorizedKeys([listed]).getAuthorizedKeys(b"whoever"), (listed,))

    def test_directory_writable_by_group_or_others_is_refused(self) -> None:
        files = KeyFiles(self, public_line())
        os.chmod(files.dir, 0o777)
        directory = os.path.abspath(files.dir)
        with self.assertRaises(ConsoleError) as caught:
            load_authorized_keys(files.authorized_keys)
        self.assertEqual(str(caught.exception),
                         f"manhole: directory {directory} is writable by group or others (mode 0777); "
                         f"run: chmod go-w {directory} (it holds the authorized_keys file {files.authorized_keys})")

    def test_file_owned_by_another_user_is_refused(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("needs root to give the file to another user")
        files = KeyFiles(self, public_line())
        os.chown(files.authorized_keys, NOBODY, -1)
        with self.assertRaises(ConsoleError) as caught:
            load_authorized_keys(files.authorized_keys)
        self.assertEqual(str(caught.exception),
                         f"manhole: authorized_keys file {files.authorized_keys} is owned by uid {NOBODY}, not by "
                         f"root or the daemon's user (uid 0); run: chown root {files.authorized_keys}")

    def test_dsa_and_short_rsa_keys_are_refused_line_by_line(self) -> None:
        strong_rsa = keys.Key(rsa.generate_private_key(65537, 2048)).public()
        weak_rsa = keys.Key(rsa.generate_private_key(65537, 1024)).public()
        dsa_key = keys.Key(dsa.generate_private_key(1024)).public()
        ed25519 = public_line("alice")
        files = KeyFiles(self, ed25519, dsa_key.toString("openssh"), weak_rsa.toString("openssh"),
                         strong_rsa.toString("openssh"))
        warnings = capture_warnings(self)
        found = load_authorized_keys(files.authorized_keys)
        self.assertEqual(found, (keys.Key.fromString(ed25519), strong_rsa))
        self.assertEqual(warnings, [
            f"manhole: {files.authorized_keys}:2: DSA keys are not accepted (OpenSSH dropped them too)",
            f"manhole: {files.authorized_keys}:3: 1024-bit RSA key refused: at least 2048 bits are needed"])


class HostKeyTests(SynchronousTestCase):
    def test_created_ed25519_with_mode_0600_whatever_the_umask(self) -> None:
        path = os.path.join(self.mktemp(), "sub", "host_key")
        old_umask = os.umask(0)
        self.addCleanup(os.umask, old_umask)
        key = load_or_create_host_key(path)
        self.assertEqual(key.sshType(), b"ssh-ed25519")
        self.assertFalse(key.isPublic())
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path + ".pub", "rb") as f:
            self.assertEqual(keys.Key.fromString(f.read()), key.public())

    def test_stable_across_restarts(self) -> None:
        path = os.path.join(self.mktemp(), "host_key")
        first = load_or_create_host_key(path)
        with open(path, "rb") as f:
            content = f.read()
        self.assertEqual(load_or_create_host_key(path), first)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), content)

    def test_key_readable_by_group_or_others_is_refused_not_repaired(self) -> None:
        path = os.path.join(self.mktemp(), "host_key")
        load_or_create_host_key(path)
        for mode in (0o640, 0o604, 0o644):
            os.chmod(path, mode)
            with self.assertRaises(ConsoleError) as caught:
                load_or_create_host_key(path)
            self.assertEqual(str(caught.exception), f"manhole: host key {path} is readable or writable by group "
                                                    f"or others (mode {mode:04o}); run: chmod 600 {path}")
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), mode)

    def test_unreadable_key_file_is_a_clear_error(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"not a key\n")
        os.chmod(path, 0o600)
        with self.assertRaises(ConsoleError) as caught:
            load_or_create_host_key(path)
        self.assertTrue(str(caught.exception).startswith(f"manhole: host key {path} is not a private key"))


class RefusalTests(SynchronousTestCase):
    def test_appliance_refuses_to_start_without_a_usable_key_list(self) -> None:
        files = KeyFiles(self, public_line())
        os.chmod(files.authorized_keys, 0o664)
        with self.assertRaises(StartError) as caught:
            Appliance("teredo.yaml", make_config(server=SERVER, manhole=files.config()), reactor=reactor,
                      role_factories=World().factories())
        self.assertEqual(caught.exception.errors, [
            f"manhole: authorized_keys file {files.authorized_keys} is writable by group or others "
            f"(mode 0664); run: chmod go-w {files.authorized_keys}"])

    def test_bad_listen_string_is_refused(self) -> None:
        files = KeyFiles(self, public_line())
        with self.assertRaises(ConsoleError) as caught:
            ManholeService(files.config(listen="tcp:notaport"), appliance=None, reactor=reactor)  # type: ignore[arg-type]
        self.assertTrue(str(caught.exception).startswith("manhole: listen 'tcp:notaport' is not a strports endpoint"))


class FakeChannel:
    """Stands in for conch's SSHSessionProcessProtocol: collects output, records how it ended."""

    def __init__(self) -> None:
        self.session = object()
        self.output = bytearray()
        self.ended: Failure | None = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport  # transport.write(data) types into the console

    def write(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.ended = reason


class SessionTests(SynchronousTestCase):
    """The session glue without SSH: resizes and EOF, the trap of manhole_ssh.TerminalSession."""

    def open_console(self, *outcomes: Any) -> tuple[Appliance, FakeChannel, ISession]:
        self.world = World()
        appliance = Appliance("teredo.yaml", make_config(server=SERVER, relay=RELAY), reactor=object(),
                              role_factories=self.world.factories(), loader=ScriptedLoader(*outcomes))
        appliance.privilegedStartService()
        appliance.startService()
        self.addCleanup(appliance.stopService)
        self.counters: Counter[str] = Counter()
        _, avatar, _ = ConsoleRealm(appliance, self.counters).requestAvatar(b"admin", None, IConchUser)
        session = ISession(avatar.original)
        session.getPty(b"xterm", (24, 80, 0, 0), [])
        channel = FakeChannel()
        session.openShell(channel)
        return appliance, channel, session

    def test_window_resize_is_recorded_without_clearing_the_screen(self) -> None:
        _, channel, session = self.open_console()
        del channel.output[:]
        session.windowChanged((50, 132, 0, 0))
        self.assertEqual(bytes(channel.output), b"")
        channel.transport.write(b"status()\r")
        self.assertIn("NAT Type                 : cone", plain(bytes(channel.output)))

    def test_eof_waits_for_a_pending_reload_then_ends_with_status_0(self) -> None:
        _, channel, session = self.open_console(make_config(server=SERVER, relay=RELAY_BIGGER))
        self.world.slow_stop.add("relay")
        channel.transport.write(b"reload()\r")
        session.eofReceived()
        self.assertIsNone(channel.ended)  # the answer is still to come
        self.world.stopping.pop().callback(None)
        self.assertIn("restarted : relay", plain(bytes(channel.output)))
        self.assertIsNotNone(channel.ended)
        self.assertIsInstance(channel.ended.value, ProcessDone)
        self.assertEqual(channel.ended.value.exitCode, 0)

    def test_help_lists_every_command(self) -> None:
        _, channel, _ = self.open_console()
        channel.transport.write(b"help()\r")
        listed = [line.split()[0] for line in plain(bytes(channel.output)).splitlines() if line.startswith("  ")]
        self.assertEqual([name for name in listed if not name.startswith("peers()")],
                         ["status()", "peers(role)", "reload()", "check()", "drain(role,", "undrain(role)",
                          "help()", "exit()", "appliance", "config"])

    def test_check_shows_what_a_reload_would_do_and_does_nothing(self) -> None:
        appliance, channel, _ = self.open_console(make_config(server=SERVER))  # the relay's section is gone
        del channel.output[:]
        channel.transport.write(b"check()\r")
        shown = plain(bytes(channel.output))
        self.assertIn("would stop   : relay\n", shown)
        self.assertIn("changes      : roles.relay removed\n", shown)
        self.assertIn("warnings     : roles.relay no longer in the file: stopping relay", shown)
        self.assertEqual(list(appliance.namedServices), ["server", "relay"])

    def test_config_names_the_configuration_in_force(self) -> None:
        _, channel, _ = self.open_console(make_config(server=SERVER, relay=RELAY_BIGGER))
        channel.transport.write(b"reload()\r")
        del channel.output[:]
        channel.transport.write(b"config.roles.relay.mtu\r")
        self.assertIn("\n1400\n", plain(bytes(channel.output)))

    def test_exit_ends_the_session_instead_of_the_daemon(self) -> None:
        _, channel, _ = self.open_console()
        channel.transport.write(b"exit()\r")
        self.assertIsNotNone(channel.ended)

    def test_overlong_line_is_discarded_with_a_message_and_counted(self) -> None:
        _, channel, _ = self.open_console()
        warnings = capture_warnings(self)
        for chunk in (b"x = 1; undefined_", b"a" * 3000, b"b" * 3000, b"c" * 10000 + b"\r"):
            channel.transport.write(chunk)  # one line arriving in several chunks, past MAX_LINE_LENGTH
        channel.transport.write(b"'\xc3\xa9 ' + str(2 ** 10)\r")  # non-ASCII bytes are ignored quietly
        text = plain(bytes(channel.output))
        self.assertIn(f"input line longer than {MAX_LINE_LENGTH} characters: discarded up to the next Enter", text)
        self.assertNotIn("NameError", text)  # nothing of the line ran
        self.assertIn("' 1024'", text)  # and the prompt works on
        self.assertEqual(self.counters["input.line_too_long"], 1)
        self.assertEqual(warnings, [])

    def test_overlong_line_drops_its_whole_statement(self) -> None:
        _, channel, _ = self.open_console()
        channel.transport.write(b"for i in range(3):\r")
        channel.transport.write(b"    print('ran', i) # " + b"z" * MAX_LINE_LENGTH + b"\r")
        channel.transport.write(b"\r")  # would end the block and run it
        channel.transport.write(b"print('after')\r")
        text = plain(bytes(channel.output))
        self.assertNotIn("ran 0", text)
        self.assertIn("\nafter\n", text)

    def test_paste_is_echoed_once_per_chunk_not_per_keystroke(self) -> None:
        _, channel, _ = self.open_console()
        del channel.output[:]
        line = b"1" + b"+1" * 1999  # every prefix tokenizes, so Manhole colours it
        channel.transport.write(line)
        # One coloured redraw; Manhole redrew the whole line on every keystroke (80 MB here).
        self.assertLess(len(channel.output), 2 * len(lastColorizedLine(line)))
        channel.transport.write(b"\r")
        self.assertIn("\n2000\n", plain(bytes(channel.output)))
        self.assertEqual(self.counters["input.line_too_long"], 0)


class AdmissionTests(SynchronousTestCase):
    """Connections that have not logged in: how many, for how long, with how much buffered."""

    def console(self, **limits: Any) -> tuple[ManholeService, MemoryReactorClock]:
        clock = MemoryReactorClock()
        console = ManholeService(KeyFiles(self, public_line()).config(**limits), appliance=None,  # type: ignore[arg-type]
                                 reactor=clock)
        console.factory.doStart()
        self.addCleanup(console.factory.doStop)
        return console, clock

    def connect(self, console: ManholeService, port: int = 40000) -> tuple[Any, StringTransport]:
        protocol = console.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", port))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", port))
        if protocol is not None:
            protocol.makeConnection(transport)
        return protocol, transport

    def test_connections_beyond_max_unauthenticated_are_closed_at_accept(self) -> None:
        console, _ = self.console(max_unauthenticated=3)
        warnings = capture_warnings(self)
        held = [self.connect(console, 40000 + i)[0] for i in range(3)]
        self.assertNotIn(None, held)
        self.assertEqual([self.connect(console, 41000 + i)[0] for i in range(5)], [None] * 5)
        self.assertEqual(console.counters["refused.unauthenticated"], 5)
        self.assertEqual(console.status()["unauthenticated"], "3 (max 3, 60 s to log in)")
        self.assertEqual(len(warnings), 1)  # one line per episode, not per connection
        held[0].connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(self.connect(console)[0])  # a slot is free again

    def test_a_connection_that_does_not_log_in_in_time_is_closed(self) -> None:
        console, clock = self.console(login_grace_time=5)
        protocol, transport = self.connect(console)
        clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(console.counters["closed.login_grace_time"], 1)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(console.status()["unauthenticated"], "0 (max 10, 5 s to log in)")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_huge_packet_before_login_is_refused_and_nothing_more_is_buffered(self) -> None:
        console, _ = self.console()
        protocol, transport = self.connect(console)
        # Under conch's own 1 MiB bound, so conch alone would buffer it all, read by read.
        protocol.dataReceived(b"SSH-2.0-flood\r\n" + struct.pack("!LB", 1_000_000, 4) + b"\0" * 3)
        self.assertTrue(transport.disconnecting)
        for _ in range(16):
            protocol.dataReceived(b"\0" * 65536)
        self.assertEqual(protocol.buf, b"")
        self.assertEqual(console.counters["closed.preauth_packet"], 1)

    def test_preauth_buffer_is_bounded_whatever_the_packets_say(self) -> None:
        console, _ = self.console()
        protocol, transport = self.connect(console)
        protocol.dataReceived(b"SSH-2.0-flood\r\n")
        protocol.dataReceived(b"\0" * (PREAUTH_MAX_BUFFER + 1))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(protocol.buf, b"")
        self.assertEqual(console.counters["closed.preauth_buffer"], 1)

    def test_malformed_message_closes_the_connection_with_one_line(self) -> None:
        console, _ = self.console()
        protocol, transport = self.connect(console)
        warnings = capture_warnings(self)
        protocol.dataReceived(b"SSH-2.0-flood\r\n")
        protocol.dispatchMessage(20, b"\xff")  # a KEXINIT too short to parse
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(warnings), 1)
        self.assertIn("manhole: malformed SSH message 20 from 192.0.2.1:40000", warnings[0])
        self.assertEqual(console.counters["closed.malformed"], 1)


class RenderTests(SynchronousTestCase):
    def test_status_report_reads_like_netsh(self) -> None:
        report = render_status({"client": {"role": "client", "counters": {"rx.ra": 2}, "state": "qualified",
                                           "nat_type": "restricted", "local_mapping": "198.18.1.2:1234",
                                           "ipv6_address": "2001:0::1", "fallback_servers": [], "drops": {},
                                           "qualified": True}})
        self.assertEqual(report.splitlines()[1:-1], [  # blocks (counters) after the one column of labels
            "Role                     : client",
            "State                    : qualified",
            "NAT Type                 : restricted",
            "Local Mapping            : 198.18.1.2:1234",
            "IPv6 Address             : 2001:0::1",
            "Fallback Servers         : -",
            "Drops                    : -",
            "Qualified                : yes",
            "Counters",
            "    rx.ra                : 2",
        ])

    def test_peer_table_says_the_true_total_when_cut(self) -> None:
        peers = [{"address": f"2001:0::{i}", "trusted": i % 2 == 0} for i in range(2)]
        self.assertEqual(render_peers({"role": "relay", "total": 3, "peers": peers}).splitlines(), [
            "relay: 3 peer(s)",
            "address    trusted",
            "2001:0::0  yes",
            "2001:0::1  no",
            "... 1 more: peers('relay', limit=0) lists all",
        ])

    def test_summary_lines_up_errors(self) -> None:
        summary = render_summary({"started": ["relay"], "stopped": [], "restarted": [], "unchanged": ["server"],
                                  "restored": ["client"], "errors": ["client: one", "relay: two"]})
        self.assertEqual(summary.splitlines(), [
            "started   : relay", "stopped   : -", "restarted : -", "unchanged : server",
            "restored  : client", "errors    : client: one", "            relay: two"])


class Collect(ProcessProtocol):
    """Feeds stdin to a subprocess, closes it, and fires with (stdout, stderr, exit code)."""

    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out, self.err = bytearray(), bytearray()
        self.done: Deferred[tuple[bytes, str, int]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.done.callback((bytes(self.out), self.err.decode("utf-8", "replace"), reason.value.exitCode))


class RealSSHTests(TestCase):
    """OpenSSH's `ssh` against the console of a running appliance (fake roles)."""

    timeout = 60

    def setUp(self) -> Deferred[None] | None:
        self.ssh, keygen = shutil.which("ssh"), shutil.which("ssh-keygen")
        if not self.ssh or not keygen:
            raise SkipTest("needs the OpenSSH client (ssh, ssh-keygen)")
        self.files = KeyFiles(self)
        for name in ("admin", "intruder"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test",
                            "-f", f"{self.files.dir}/{name}"], check=True)
        with open(f"{self.files.dir}/admin.pub", "rb") as f:
            self.files.write(f.read().strip())
        self.world = World()
        # The reload adds the relay and moves the console: the session that asks must survive it.
        reloaded = make_config(server=SERVER, relay=RELAY,
                               manhole=self.files.config(listen="tcp:port=0:interface=127.0.0.1"))
        self.appliance = Appliance("/etc/teredo/teredo.yaml", make_config(server=SERVER, manhole=self.files.config()),
                                   reactor=reactor, role_factories=self.world.factories(),
                                   loader=ScriptedLoader(reloaded))
        self.appliance.privilegedStartService()
        self.appliance.startService()
        self.addCleanup(self.appliance.stopService)
        return None

    def port(self) -> int:
        return int(self.appliance.getServiceNamed("manhole").address().rsplit(":", 1)[1])

    def run_ssh(self, stdin: bytes, *options: str, user: str = "admin",
                command: tuple[str, ...] = ()) -> Deferred[tuple[bytes, str, int]]:
        port = self.port()
        known_hosts = os.path.join(self.files.dir, "known_hosts")
        with open(self.files.host_key + ".pub") as pub, open(known_hosts, "w") as f:
            f.write(f"[127.0.0.1]:{port} {pub.read()}")
        args = [self.ssh, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={known_hosts}", "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes",
                "-o", "IdentityAgent=none", "-o", "ConnectTimeout=10", "-e", "none", "-p", str(port),
                *options, f"{user}@127.0.0.1", *command]
        collect = Collect(stdin)
        reactor.spawnProcess(collect, self.ssh, args, env={"PATH": os.environ.get("PATH", ""),
                                                            "HOME": self.files.dir})
        return collect.done

    async def test_status_and_reload_over_ssh(self) -> None:
        loud = capture_warnings(self)
        out, err, code = await self.run_ssh(b"status()\nreload()\n", "-tt", "-i", f"{self.files.dir}/admin",
                                            user="anyone")
        text = plain(out)
        self.assertEqual(code, 0, err + text)
        # An ordinary login and logout is not a warning or an error in the daemon's log.
        self.assertEqual(loud, [])
        self.assertIn("Role                     : server\nRunning                  : yes\n"
                      "NAT Type                 : cone\nCounters\n    rx.rs                : 3\n", text)
        self.assertIn("Role                     : manhole\n", text)
        self.assertIn("reloading /etc/teredo/teredo.yaml ...\n", text)
        self.assertIn("started   : relay\nstopped   : -\nrestarted : manhole\nunchanged : server\n"
                      "errors    : -\n", text)
        self.assertTrue(self.appliance.getServiceNamed("relay").running)
        # The new console (new port) takes logins with the same, stable host key.
        out, err, code = await self.run_ssh(b"peers('relay')\n", "-tt", "-i", f"{self.files.dir}/admin")
        self.assertEqual(code, 0, err)
        self.assertIn("relay: 3 peer(s)\naddress           trusted\n2001:0:c612:1::1  yes\n", plain(out))

    async def test_exec_request_is_refused_in_one_line_without_a_traceback(self) -> None:
        loud = capture_warnings(self)
        out, err, code = await self.run_ssh(b"", "-i", f"{self.files.dir}/admin", "-T", command=("status",))
        self.assertEqual((out, err, code), (b"", EXEC_REFUSAL.decode(), 1))
        self.assertEqual(loud, [])
        # The console still takes interactive logins afterwards.
        out, _, code = await self.run_ssh(b"status()\n", "-tt", "-i", f"{self.files.dir}/admin")
        self.assertEqual(code, 0)
        self.assertIn("Role                     : server", plain(out))

    async def test_wrong_key_is_refused(self) -> None:
        out, err, code = await self.run_ssh(b"status()\n", "-tt", "-i", f"{self.files.dir}/intruder")
        self.assertEqual(code, 255)
        self.assertIn("Permission denied (publickey)", err)
        self.assertNotIn(b"Role", out)

    async def test_refused_login_is_one_line_with_address_user_and_key(self) -> None:
        warnings = capture_warnings(self)
        _, _, code = await self.run_ssh(b"status()\n", "-tt", "-i", f"{self.files.dir}/intruder", user="mallory")
        self.assertEqual(code, 255)
        with open(f"{self.files.dir}/intruder.pub", "rb") as f:
            intruder = fingerprint(keys.Key.fromString(f.read()))
        self.assertEqual(len(warnings), 1, warnings)
        self.assertRegex(warnings[0], r"^manhole: login refused: user 'mallory' from 127\.0\.0\.1:\d+ with key "
                         + re.escape(intruder) + "$")

    async def test_64k_paste_leaves_the_reactor_running(self) -> None:
        """A 64 KB line pasted into the console (it froze every role) is discarded in bounded time."""
        ticks: list[float] = []
        heartbeat = LoopingCall(lambda: ticks.append(reactor.seconds()))
        heartbeat.start(HEARTBEAT)
        started = reactor.seconds()
        paste = b"len('" + b"p" * 4000 + b"')\n" + b"x = '" + b"a" * 65536 + b"'\n" + b"6 * 7\n"
        out, err, code = await self.run_ssh(paste, "-tt", "-i", f"{self.files.dir}/admin")
        ticks.append(reactor.seconds())  # a freeze just before the end shows as a late last tick
        elapsed = ticks[-1] - started
        heartbeat.stop()
        text = plain(out)
        self.assertEqual(code, 0, err + text)
        self.assertIn("\n4000\n", text)
        self.assertIn(f"input line longer than {MAX_LINE_LENGTH} characters: discarded up to the next Enter", text)
        self.assertIn("\n42\n", text)
        self.assertLess(elapsed, 15)
        lateness = max(later - earlier - HEARTBEAT for earlier, later in itertools.pairwise(ticks))
        self.assertLess(lateness, 0.5)
        console = self.appliance.getServiceNamed("manhole")
        self.assertEqual(console.status()["counters"], {"input.line_too_long": 1})

    async def test_password_login_is_refused(self) -> None:
        for method in ("password", "keyboard-interactive"):
            _, err, code = await self.run_ssh(b"status()\n", "-tt", "-o", f"PreferredAuthentications={method}",
                                              "-o", "PubkeyAuthentication=no")
            self.assertEqual(code, 255)
            self.assertIn("Permission denied (publickey)", err)  # publickey is the only method offered


class ConsoleReloadTests(TestCase):
    """Console-specific reload rules: a busy new port restores the old console; keys re-read in place."""

    def start(self, files: KeyFiles, *outcomes: Any) -> Appliance:
        appliance = Appliance("teredo.yaml", make_config(server=SERVER, manhole=files.config()), reactor=reactor,
                              role_factories=World().factories(), loader=ScriptedLoader(*outcomes))
        appliance.privilegedStartService()
        appliance.startService()
        self.addCleanup(appliance.stopService)
        return appliance

    async def test_busy_port_restores_the_previous_console(self) -> None:
        busy = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        port = busy.getHost().port
        files = KeyFiles(self, public_line())
        appliance = self.start(files, make_config(server=SERVER,
                                                  manhole=files.config(f"tcp:{port}:interface=127.0.0.1")))
        result = await appliance.reload()
        self.assertEqual(result["restored"], ["manhole"])
        self.assertEqual(result["errors"], [f"manhole: cannot start: Couldn't listen on 127.0.0.1:{port}: "
                                            "[Errno 98] Address already in use.; "
                                            "the previous configuration was restored"])
        self.assertEqual(appliance.config.manhole, files.config())
        self.assertIsNotNone(appliance.getServiceNamed("manhole").address())  # listening again (on port 0)
        self.flushLoggedErrors(CannotListenError)

    async def test_key_list_is_reread_in_place(self) -> None:
        first, second = public_line("alice"), public_line("bob")
        files = KeyFiles(self, first)
        config = make_config(server=SERVER, manhole=files.config())
        appliance = self.start(files, config, config)
        console = appliance.getServiceNamed("manhole")
        files.write(first, second)
        result = await appliance.reload()
        self.assertEqual(result["unchanged"], ["server", "manhole"])
        self.assertIs(appliance.getServiceNamed("manhole"), console)
        self.assertEqual(len(console.keys.keys), 2)
        files.write(first, mode=0o666)
        result = await appliance.reload()
        self.assertEqual(result["errors"], [
            f"manhole: authorized_keys file {files.authorized_keys} is writable by group or others (mode 0666); "
            f"run: chmod go-w {files.authorized_keys}; the console keeps its 2 previous key(s)"])
        self.assertEqual(len(console.keys.keys), 2)


# A client in its own process, so that its sockets are not counted among the console's.
HOLD_CONNECTIONS = """
import socket, sys
held = [socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) for _ in range(int(sys.argv[2]))]
print(len(held), flush=True)
sys.stdin.read()
"""
# Each connection sends the banner and announces a 1,000,000-byte packet (under conch's own
# 1 MiB bound), then streams the packet; prints how many the console closed.
FLOOD_PACKETS = """
import socket, struct, sys, time
port, count, size = map(int, sys.argv[1:4])
held = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"SSH-2.0-flood\\r\\n" + struct.pack("!LB", 1000000, 4))
    held.append(s)
time.sleep(1)  # the banners are read on their own (with more, conch refuses a "long version string")
for s in held:
    try:
        for _ in range(size // 65536):
            s.sendall(bytes(65536))
    except OSError:
        pass
closed, deadline = 0, time.monotonic() + 10
for s in held:
    try:
        while True:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            if not s.recv(65536):
                break
        closed += 1
    except socket.timeout:
        pass
    except OSError:
        closed += 1
print(closed, flush=True)
sys.stdin.read()
"""


class Helper(ProcessProtocol):
    """A Python helper process: fires `ready` with its first line of output; ends when told."""

    def __init__(self) -> None:
        self.ready: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.out = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if b"\n" in self.out and not self.ready.called:
            self.ready.callback(self.out.split(b"\n")[0].decode())

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(reason)
        self.ended.callback(None)


class RealAdmissionTests(TestCase):
    """Many idle or hostile TCP connections to a console listening on loopback."""

    timeout = 60

    def start(self, **limits: Any) -> ManholeService:
        files = KeyFiles(self, public_line())
        appliance = Appliance("teredo.yaml", make_config(server=SERVER, manhole=files.config(**limits)),
                              reactor=reactor, role_factories=World().factories(),
                              log_sink=LogSink(io.StringIO(), LogConfig()))
        appliance.privilegedStartService()
        appliance.startService()
        self.addCleanup(appliance.stopService)
        return appliance.getServiceNamed("manhole")

    async def helper(self, script: str, *args: int) -> tuple[str, Helper]:
        helper = Helper()
        process = reactor.spawnProcess(helper, sys.executable, [sys.executable, "-c", script, *map(str, args)],
                                       env={"PATH": os.environ.get("PATH", "")})

        async def end() -> None:
            process.closeStdin()
            await helper.ended

        self.addCleanup(end)
        return await helper.ready, helper

    async def test_300_idle_connections_hold_at_most_max_unauthenticated_descriptors(self) -> None:
        console = self.start(max_unauthenticated=10, login_grace_time=3)
        port = int(console.address().rsplit(":", 1)[1])
        baseline = open_fds()
        made, _ = await self.helper(HOLD_CONNECTIONS, port, 300)
        self.assertEqual(made, "300")
        counters, waiting = console.counters, console.factory.unauthenticated
        peak = open_fds()
        # Until every connection was accepted and either refused or held to the end of its grace time.
        while counters["refused.unauthenticated"] + counters["closed.login_grace_time"] < 300:
            peak = max(peak, open_fds())
            self.assertLessEqual(len(waiting), 10)
            await deferLater(reactor, 0.05)
        self.assertLessEqual(peak - baseline, 10 + HELPER_FDS)
        self.assertGreaterEqual(counters["refused.unauthenticated"], 250)
        # A connection closed at the end of its grace time leaves the table when its close
        # completes, a reactor turn or so after it was counted.
        for _ in range(40):
            if not waiting:
                break
            await deferLater(reactor, 0.05)
        self.assertEqual(console.status()["unauthenticated"], "0 (max 10, 3 s to log in)")
        self.assertLessEqual(open_fds() - baseline, HELPER_FDS)

    async def test_unfinished_huge_packets_are_cut_off_and_memory_stays_bounded(self) -> None:
        console = self.start(max_unauthenticated=100)
        port = int(console.address().rsplit(":", 1)[1])
        before = rss_kib()
        # 50 x 900 KB: conch alone kept 45 MB (and copied each buffer on every read).
        closed, _ = await self.helper(FLOOD_PACKETS, port, 50, 900 * 1024)
        await deferLater(reactor, 0.5)
        self.assertEqual(closed, "50")
        # Cut off by the announced length, or by the buffer bound when much arrives in one read.
        self.assertEqual(console.counters["closed.preauth_packet"] + console.counters["closed.preauth_buffer"], 50,
                         console.counters)
        self.assertLess(rss_kib() - before, 10 * 1024)
