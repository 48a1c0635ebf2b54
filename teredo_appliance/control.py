"""The control socket (the `control` section) that `teredoctl` talks to.

One JSON request per line in, one JSON answer per line out, then the connection closes:

    {"command": "status"}                        -> {"ok": true, "result": {role: report}}
    {"command": "peers", "role": "relay", "limit": 50}
                                                 -> {"ok": true, "result": {"role", "total", "peers"}}
    {"command": "reload", "dry_run": false}      -> {"ok": true|false, "result": summary, "errors": [...]}
    {"command": "version"}                       -> {"ok": true, "result": {"version": ...}}
    {"command": "drain", "role": "relay", "grace": 5}
                                                 -> {"ok": true, "result": anycast status}, once drained
    {"command": "undrain", "role": "relay"}      -> {"ok": true, "result": anycast status}

Failures are {"ok": false, "error": sentence, "errors": [FILE:LINE messages]}. The socket is
a local AF_UNIX file of mode 0600 owned by the daemon's user (created as root, before
twistd drops privileges): whoever can open it may reload, like whoever may send SIGHUP.
A request is at most MAX_REQUEST bytes, at most MAX_CLIENTS connections are served at
once, and a connection that sends nothing for REQUEST_TIMEOUT seconds is closed.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import unix
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

import teredo_appliance
import twisted
from teredo_appliance.config import ConfigError
from teredo_appliance.config_model import ControlConfig

if TYPE_CHECKING:
    from teredo_appliance.view import ApplianceView

log = Logger()

MAX_REQUEST = 4096  # bytes in one request line; the longest real one is ~60
MAX_CLIENTS = 16  # connections served at once; more are told to retry
REQUEST_TIMEOUT = 10.0  # seconds a connection may stay silent before it is closed
BACKLOG = 16
SOCKET_MODE = 0o600
DIRECTORY_MODE = 0o755
COMMANDS = ("status", "peers", "reload", "version", "drain", "undrain")
MAX_GRACE = 3600.0  # seconds a drain asked over the socket may serve on (an hour of maintenance)

Answer = dict[str, Any]


class ControlError(ConfigError):
    """The control socket cannot be opened; the single message says why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__([message])


def refusal(error: str, errors: list[str] | None = None) -> Answer:
    return {"ok": False, "error": error, "errors": errors or []}


class ControlCommands:
    """The commands, over the appliance's narrow interface (status, peers, reload, config)."""

    def __init__(self, appliance: ApplianceView) -> None:
        self.appliance = appliance

    def handle(self, line: bytes) -> Answer | Deferred[Answer]:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return refusal("the request is not a JSON object")
        if not isinstance(request, dict):
            return refusal("the request is not a JSON object")
        command = request.get("command")
        if command not in COMMANDS:
            return refusal(f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")
        return getattr(self, "do_" + command)(request)

    def do_status(self, request: dict[str, Any]) -> Answer:
        return {"ok": True, "result": self.appliance.status()}

    def do_version(self, request: dict[str, Any]) -> Answer:
        return {"ok": True, "result": {"version": teredo_appliance.__version__, "twisted": twisted.__version__,
                                       "python": sys.version.split()[0], "config": self.appliance.config_path}}

    def do_peers(self, request: dict[str, Any]) -> Answer:
        role, limit = request.get("role"), request.get("limit")
        if not isinstance(role, str):
            return refusal("peers needs a role: relay or client")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            return refusal(f"limit must be a whole number >= 0 (0: all), not {limit!r}")
        try:
            return {"ok": True, "result": self.appliance.peers(role, limit or None)}
        except LookupError as error:
            return refusal(str(error.args[0]))

    def do_drain(self, request: dict[str, Any]) -> Answer | Deferred[Answer]:
        role, grace = request.get("role"), request.get("grace")
        if not isinstance(role, str):
            return refusal("drain needs a role: relay or server")
        if grace is not None and (isinstance(grace, bool) or not isinstance(grace, (int, float))
                                  or not 0 <= grace <= MAX_GRACE):
            return refusal(f"grace must be a number of seconds 0..{MAX_GRACE:g}, not {grace!r}")
        try:
            d = self.appliance.drain(role, grace)
        except LookupError as error:
            return refusal(str(error.args[0]))
        return d.addCallback(lambda result: {"ok": True, "result": result})

    def do_undrain(self, request: dict[str, Any]) -> Answer:
        role = request.get("role")
        if not isinstance(role, str):
            return refusal("undrain needs a role: relay or server")
        try:
            return {"ok": True, "result": self.appliance.undrain(role)}
        except LookupError as error:
            return refusal(str(error.args[0]))

    def do_reload(self, request: dict[str, Any]) -> Answer | Deferred[Answer]:
        if request.get("dry_run"):
            return self.dry_run()
        return self.appliance.reload().addCallback(self._reloaded)

    @staticmethod
    def _reloaded(summary: dict[str, list[str]]) -> Answer:
        errors = list(summary.get("errors", []))
        answer: Answer = {"ok": not errors, "result": summary, "errors": errors}
        if errors and not any(summary.get(key) for key in ("started", "stopped", "restarted", "reconfigured")):
            answer["error"] = "reload refused; the running configuration is unchanged"
        elif errors:
            answer["error"] = "reload partly failed; the summary says what runs now"
        return answer

    def dry_run(self) -> Answer:
        """What a reload would do, touching nothing: the appliance's own check(), as the console's."""
        result = self.appliance.check()
        if result["errors"]:
            return {**refusal("reload would be refused", result["errors"]), "result": result}
        return {"ok": True, "result": result}


class ControlProtocol(LineOnlyReceiver, TimeoutMixin):
    """One request line, one answer line, then close."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST
    factory: ControlFactory

    def __init__(self) -> None:
        self._counted = False
        self._answered = False

    def connectionMade(self) -> None:
        self.callLater = self.factory.clock.callLater  # TimeoutMixin's timer, on the service's reactor
        if self.factory.clients >= MAX_CLIENTS:
            self._answer(refusal(f"busy: {MAX_CLIENTS} control connections are open; try again"))
            return
        self.factory.clients += 1
        self._counted = True
        self.setTimeout(REQUEST_TIMEOUT)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.setTimeout(None)
        if self._counted:
            self.factory.clients -= 1
            self._counted = False

    def timeoutConnection(self) -> None:
        self._answer(refusal(f"no request within {REQUEST_TIMEOUT:g} seconds"))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._answer(refusal(f"request longer than {MAX_REQUEST} bytes"))

    def lineReceived(self, line: bytes) -> None:
        if self._answered:
            return
        self._answered = True  # one request per connection: the rest of the input is ignored
        self.setTimeout(None)
        self.transport.pauseProducing()
        d = maybeDeferred(self.factory.commands.handle, line)
        d.addErrback(self._failed)
        d.addCallback(self._answer)

    def _failed(self, failure: Failure) -> Answer:
        log.failure("control: a command failed", failure)
        return refusal(f"internal error: {failure.getErrorMessage()}")

    def _answer(self, answer: Answer) -> None:
        self._answered = True
        if self.transport is None or getattr(self.transport, "disconnected", False):
            return
        self.transport.write(json.dumps(answer, default=str).encode() + b"\n")
        self.transport.loseConnection()


class ControlFactory(Factory):
    protocol = ControlProtocol
    noisy = False

    def __init__(self, commands: ControlCommands, clock: Any) -> None:
        self.commands = commands
        self.clock = clock
        self.clients = 0


class ControlPort(unix.Port):
    """Twisted's UNIX port, whose removal of the socket file on stop may fail once twistd
    dropped root (a directory the user cannot write): that is said, not raised."""

    def connectionLost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)
        except OSError as error:
            log.info("control: cannot remove {path}: {error}", path=os.fsdecode(self.port), error=error.strerror)


def remove_stale_socket(path: str) -> None:
    """Remove a socket left by a daemon that died; refuse to touch anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise ControlError(f"control: cannot inspect {path}: {error.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"control: {path} exists and is not a socket; remove it or set control.socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nobody listens: stale
        except OSError as error:
            raise ControlError(f"control: cannot check {path}: {error.strerror}") from None
        else:
            raise ControlError(f"control: another process listens on {path} (is another appliance running?)")
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise ControlError(f"control: cannot remove the stale socket {path}: {error.strerror}") from None
    log.info("control: removed the stale socket {path}", path=path)


class ControlService(Service):
    """Listens on the control socket; `owner` is (uid, gid) twistd will drop to, or Nones."""

    def __init__(self, config: ControlConfig, appliance: ApplianceView, reactor: Any = None,
                 owner: tuple[int | None, int | None] = (None, None)) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.owner = owner
        self.factory = ControlFactory(ControlCommands(appliance), reactor)
        self._port: ControlPort | None = None
        self.setName("control")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        path = self.config.socket
        self._make_directory(os.path.dirname(path))
        remove_stale_socket(path)
        port = ControlPort(path, self.factory, BACKLOG, SOCKET_MODE, self.reactor)
        previous = os.umask(0o177)  # the socket is never, even briefly, reachable by others
        try:
            port.startListening()
        except Exception as error:
            raise ControlError(f"control: cannot listen on {path}: {error}") from None
        finally:
            os.umask(previous)
        self._port = port
        self._chown(path)
        log.info("control: teredoctl socket on {path}", path=path)

    def _make_directory(self, directory: str) -> None:
        if os.path.isdir(directory):
            return
        try:
            os.makedirs(directory, mode=DIRECTORY_MODE)
            os.chmod(directory, DIRECTORY_MODE)  # makedirs' mode is filtered by the umask
        except OSError as error:
            raise ControlError(f"control: cannot create {directory}: {error.strerror}") from None
        self._chown(directory)  # so the daemon, after dropping root, can remove its socket

    def _chown(self, path: str) -> None:
        uid, gid = self.owner
        if uid is None and gid is None:
            return
        try:
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        except OSError as error:
            raise ControlError(f"control: cannot give {path} to uid {uid}: {error.strerror}") from None

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self._port = self._port, None
        return None if port is None else port.stopListening()

    def status(self) -> dict[str, Any]:
        return {"role": "control", "running": bool(self.running), "socket": self.config.socket,
                "clients": self.factory.clients}
