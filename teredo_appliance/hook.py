"""Run an operator's Miredo-style client hook script on up / down / destroy, never blocking.

Miredo runs its client hook with STATE (up, down, destroy), IFACE, ADDRESS, LLADDRESS and
MTU in the environment, plus OLD_ADDRESS (and friends) for what the previous "up" set, so
an existing script (Debian's /etc/miredo/client-hook, or a site's own) keeps working. We
configure the tunnel ourselves; the hook is for what else a site wants done (policy
routing, firewall, notifications).

Runs are serialised in order (a "down" never overtakes the "up" before it), the backlog
is bounded, and a hook that hangs is killed after HOOK_TIMEOUT so the next one can run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

HOOK_TIMEOUT = 30.0  # seconds a hook may run before it is killed
MAX_BACKLOG = 8  # runs waiting behind a slow hook; older ones are dropped beyond that
OUTPUT_LIMIT = 4096  # bytes of a hook's output kept for the log
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def hook_environment(
    state: str, iface: str, lladdress: str, mtu: int, address: str | None, old: Mapping[str, str] | None
) -> dict[str, str]:
    """The variables Miredo's hook scripts read; ADDRESS only when there is one (state up)."""
    env = dict(BASE_ENV, STATE=state, IFACE=iface, LLADDRESS=lladdress, MTU=str(mtu))
    if address is not None:
        env["ADDRESS"] = address
    for key, value in (old or {}).items():
        env["OLD_" + key] = value
    return env


class _HookProcess(ProcessProtocol):
    def __init__(self, ended: Callable[[_HookProcess, Failure], None], state: str) -> None:
        self.ended = ended
        self.state = state
        self.output = b""
        self.timer: Any = None

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-OUTPUT_LIMIT:]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended(self, reason)


class Hook:
    """The hook of one client role; `run(env)` queues a run and returns at once."""

    log = Logger()

    def __init__(self, path: str, reactor: Any) -> None:
        self.path = path
        self.reactor = reactor
        self._backlog: deque[dict[str, str]] = deque()
        self._current: Any = None  # IProcessTransport of the running hook
        self._idle: list[Deferred[None]] = []
        self.runs = self.failures = self.dropped = 0

    def run(self, env: dict[str, str]) -> None:
        if len(self._backlog) >= MAX_BACKLOG:
            self._backlog.popleft()
            self.dropped += 1
            self.log.warn("client hook {path} is slow: dropped a queued run", path=self.path)
        self._backlog.append(env)
        if self._current is None:
            self._next()

    def wait(self) -> Deferred[None]:
        """Fires once every queued run has finished (or was killed)."""
        if self._current is None and not self._backlog:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def _next(self) -> None:
        if not self._backlog:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        env = self._backlog.popleft()
        protocol = _HookProcess(self._ended, env["STATE"])
        try:
            self._current = self.reactor.spawnProcess(protocol, self.path, [self.path], env=env, path="/")
        except OSError as error:
            self.failures += 1
            self.log.error("cannot run client hook {path}: {error}", path=self.path, error=str(error))
            self._current = None
            self._next()
            return
        self.runs += 1
        protocol.timer = self.reactor.callLater(HOOK_TIMEOUT, self._kill)

    def _kill(self) -> None:
        if self._current is not None:
            self.log.warn("client hook {path} still running after {t:.0f} s: killing it", path=self.path,
                          t=HOOK_TIMEOUT)
            self._current.signalProcess("KILL")

    def _ended(self, protocol: _HookProcess, reason: Failure) -> None:
        if protocol.timer is not None and protocol.timer.active():
            protocol.timer.cancel()
        self._current = None
        if not reason.check(ProcessDone):
            self.failures += 1
            code = reason.value.exitCode if reason.check(ProcessTerminated) else None
            self.log.warn(
                "client hook {path} ({state}) failed (exit {code}): {output}",
                path=self.path, state=protocol.state, code=code,
                output=protocol.output.decode(errors="replace").strip(),
            )
        self._next()
