"""The SSH console (the `manhole` section): public-key login only, a Python prompt on the appliance.

Built on twisted.conch directly: manhole_tap knows only password files and keeps host
keys in class-level dicts shared by every factory. Here the authorized_keys file is the
whole access list (any user name is accepted with a listed key), the host key is an
ed25519 key created once and kept, and each console owns its factory.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application.service import Service
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.manhole_ssh import TerminalRealm, TerminalSession
from twisted.conch.ssh import keys
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from teredo_appliance.config import ConfigError
from teredo_appliance.config_model import ManholeConfig
from teredo_appliance.console import ConsoleManhole, ConsoleTerminal
from teredo_appliance.consolefiles import MALFORMED_KEY, KeysRefused, read_host_key, vet_authorized_keys
from teredo_appliance.endpoints import listen_at_once, listening_address
from teredo_appliance.privileges import privileges_dropped
from teredo_appliance.sshserver import MAX_SESSIONS, ConsoleSSHFactory, fingerprint

if TYPE_CHECKING:
    from teredo_appliance.view import ApplianceView

log = Logger()

EXEC_REFUSAL = (b"teredo console: commands are not run over ssh exec; log in for the prompt (ssh -t), "
                b"or run teredoctl on the box\n")


class ConsoleError(ConfigError):
    """The console cannot start; the single message names the file and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__([message])


def _unreadable(what: str, path: str, error: OSError) -> ConsoleError:
    hint = ""
    if isinstance(error, PermissionError) and privileges_dropped():
        hint = f" (running as uid {os.geteuid()} after privileges were dropped: make it readable by this user)"
    return ConsoleError(f"manhole: cannot read {what} {path}: {error.strerror}{hint}")


def load_authorized_keys(path: str) -> tuple[keys.Key, ...]:
    """The public keys listed in `path`.

    Refuses a missing or keyless file, and a file or directory that anyone but root or the
    daemon's user owns or may write (they could add their key). DSA keys and RSA keys
    under 2048 bits are refused one by one, each with a warning naming file:line.
    """
    try:
        found = vet_authorized_keys(path)
    except KeysRefused as error:
        raise ConsoleError(f"manhole: {error}") from None
    except OSError as error:
        raise _unreadable("authorized_keys file", path, error) from None
    for number, why in found.ignored:
        log.warn("manhole: {path}:{line}: {why}", path=path, line=number, why=why)
    return found.keys


def load_or_create_host_key(path: str) -> keys.Key:
    """The console's private host key, created (ed25519, mode 0600) the first time.

    An existing key that group or others may read or write is refused, not repaired: it
    may already have been copied, so the administrator decides (chmod 600, or a new key).
    """
    try:
        key = keys.Key.fromString(read_host_key(path))
    except FileNotFoundError:
        return _create_host_key(path)
    except OSError as error:
        raise _unreadable("host key", path, error) from None
    except KeysRefused as error:
        raise ConsoleError(f"manhole: {error}") from None
    except MALFORMED_KEY as error:
        raise ConsoleError(f"manhole: host key {path} is not a private key conch can read: {error}") from None
    if key.isPublic():
        raise ConsoleError(f"manhole: host key {path} holds a public key; a private key is needed")
    return key


def _create_host_key(path: str) -> keys.Key:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    key = keys.Key(private)
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        # O_EXCL with mode 0600: the secret is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        with open(path + ".pub", "wb") as f:  # for the admins' known_hosts
            f.write(key.public().toString("openssh") + b"\n")
    except OSError as error:
        raise ConsoleError(f"manhole: cannot create host key {path}: {error.strerror}") from None
    log.info("manhole: created host key {path} ({fingerprint})", path=path, fingerprint=fingerprint(key))
    return key


@implementer(IAuthorizedKeysDB)
class AuthorizedKeys:
    """The access list: every listed key may log in, under any user name."""

    def __init__(self, authorized: Iterable[keys.Key]) -> None:
        self.keys = tuple(authorized)

    def getAuthorizedKeys(self, avatarId: bytes) -> tuple[keys.Key, ...]:
        return self.keys


class AuditedKeyChecker(SSHPublicKeyChecker):
    """Conch's key checker (signature verified), plus one log line per successful login."""

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
        d: Deferred[bytes] = super().requestAvatarId(credentials)

        def logged(user: bytes) -> bytes:
            log.info("manhole: {user!r} logged in with key {fingerprint}",
                     user=user.decode("utf-8", "replace"),
                     fingerprint=fingerprint(keys.Key.fromString(credentials.blob)))
            return user

        return d.addCallback(logged)


class ConsoleSession(TerminalSession):
    """A manhole session that survives what the stock one raises on: resizes and EOF."""

    width, height = 80, 24  # until (unless) the client requests a pty
    _terminal: insults.ServerProtocol | None = None

    def openShell(self, proto: Any) -> None:
        # End the channel like a process that exited 0: `ssh` then exits 0, not 255, when the
        # console closes (scripts that pipe `reload()` into ssh can test for success).
        proto.loseConnection = partial(proto.processEnded, Failure(ProcessDone(0)))
        self._terminal = self.chainedProtocolFactory()
        self.transportFactory(proto, self._terminal, IConchUser(self.original), self.width, self.height)

    def execCommand(self, proto: Any, cmd: bytes) -> None:
        """`ssh box status`: one line on stderr and exit status 1, instead of conch's traceback."""
        from twisted.internet import reactor

        log.info("manhole: refused an exec request ({command!r})", command=cmd.decode("utf-8", "replace")[:80])
        # After the request is acknowledged: ending the channel inside it would answer a closed channel.
        reactor.callLater(0, self._refuse_exec, proto)

    @staticmethod
    def _refuse_exec(proto: Any) -> None:
        proto.errReceived(EXEC_REFUSAL)
        proto.processEnded(Failure(ProcessTerminated(exitCode=1)))

    def windowChanged(self, newWindowSize: tuple[int, ...]) -> None:
        self.height, self.width = newWindowSize[:2]
        console = self._console()
        if console is not None:
            console.terminalSize(self.width, self.height)

    def eofReceived(self) -> None:
        # No more input: end the session once pending answers (a reload's summary) are shown.
        console = self._console()
        if console is not None:
            console.input_ended()

    def _console(self) -> ConsoleManhole | None:
        return None if self._terminal is None else self._terminal.terminalProtocol


class ConsoleRealm(TerminalRealm):
    sessionFactory = ConsoleSession

    def __init__(self, appliance: ApplianceView, counters: Counter[str] | None = None) -> None:
        super().__init__()
        self.chainedProtocolFactory = partial(ConsoleTerminal, ConsoleManhole, appliance,
                                              Counter() if counters is None else counters)


class ManholeService(Service):
    """Listens for console logins; already open sessions outlive a stop (see stopService)."""

    def __init__(self, config: ManholeConfig, appliance: ApplianceView, reactor: Any = None,
                 host_key: keys.Key | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.keys = AuthorizedKeys(load_authorized_keys(config.authorized_keys))
        self.host_key = host_key or load_or_create_host_key(config.host_key)
        try:
            self._endpoint = serverFromString(reactor, config.listen)
        except ValueError as error:
            raise ConsoleError(f"manhole: listen {config.listen!r} is not a strports endpoint: {error}") from None
        self.counters: Counter[str] = Counter()  # refusals and drops, shown by status()
        portal = Portal(ConsoleRealm(appliance, self.counters), [AuditedKeyChecker(self.keys)])
        self.factory = ConsoleSSHFactory(portal, self.host_key, reactor, config.max_unauthenticated,
                                         config.login_grace_time, self.counters)
        self._port: Any = None
        self.setName("manhole")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._port = listen_at_once(self._endpoint, self.factory, "manhole", self.config.listen)
        log.info("manhole: SSH console on {address} (host key {fingerprint}; key exchange: curve25519 "
                 "and fixed Diffie-Hellman groups)",
                 address=self.address(), fingerprint=fingerprint(self.host_key))

    def stopService(self) -> Deferred[None] | None:
        """Stop listening. Open sessions stay: a reload typed in the console that restarts
        the console still prints its summary; a session ends when its user leaves."""
        super().stopService()
        port, self._port = self._port, None
        return None if port is None else port.stopListening()

    def reload_keys(self) -> str | None:
        """Re-read authorized_keys in place (no restart); on error keep the current list and say so."""
        try:
            fresh = load_authorized_keys(self.config.authorized_keys)
        except ConsoleError as error:
            return f"{error}; the console keeps its {len(self.keys.keys)} previous key(s)"
        if fresh != self.keys.keys:
            log.info("manhole: {path}: now {count} authorized key(s)",
                     path=self.config.authorized_keys, count=len(fresh))
            self.keys.keys = fresh
        return None

    def address(self) -> str | None:
        """host:port (or the socket path) the console listens on; None while stopped."""
        return listening_address(self._port)

    def status(self) -> dict[str, Any]:
        return {
            "role": "manhole",
            "running": bool(self.running),
            "listen": self.config.listen,
            "address": self.address(),
            "authorized_keys": f"{len(self.keys.keys)} key(s) from {self.config.authorized_keys}",
            "host_key": fingerprint(self.host_key),
            "unauthenticated": f"{len(self.factory.unauthenticated)} (max {self.config.max_unauthenticated}, "
                               f"{self.config.login_grace_time:g} s to log in)",
            "sessions": f"{len(self.factory.sessions)} (max {MAX_SESSIONS})",
            "counters": dict(sorted(self.counters.items())),
        }
