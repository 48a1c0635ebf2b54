"""The console's SSH server: factory, transport and user authentication, with admission limits.

The console lives in the daemon that carries the traffic, so nobody who has not logged
in may cost it more than a small, fixed share of descriptors, memory and time:

- at most `max_unauthenticated` connections wait for login at once (OpenSSH's
  MaxStartups); a connection beyond that is closed as soon as it is accepted;
- each has `login_grace_time` seconds to log in (OpenSSH's LoginGraceTime);
- before login a connection may announce packets of at most PREAUTH_MAX_PACKET bytes
  and buffer at most PREAUTH_MAX_BUFFER bytes;
- a message conch cannot parse costs that connection, with one log line, not a traceback;
- every refused login attempt is one log line: source address, user, key fingerprint.

Logged-in sessions are capped separately (MAX_SESSIONS): they are administrators.
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any

from twisted.conch.error import IgnoreAuthentication
from twisted.conch.ssh import keys
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.transport import (
    DISCONNECT_BY_APPLICATION,
    DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
    DISCONNECT_PROTOCOL_ERROR,
    DISCONNECT_TOO_MANY_CONNECTIONS,
    SSHServerTransport,
)
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from teredo_appliance.consolefiles import MALFORMED_KEY

log = Logger()

# RFC 4253 §6.1: every implementation must handle packets of 35000 bytes in all; that is
# all a client needs before login (key exchange, a user-auth request with a big RSA key).
PREAUTH_MAX_PACKET = 35000
# A partial packet plus what one read may add; conch's own bound (1 MiB per packet,
# growing by one read at a time) let 1,000 unfinished packets take a gigabyte.
PREAUTH_MAX_BUFFER = 2 * PREAUTH_MAX_PACKET
MAX_SESSIONS = 32  # logged-in console connections at once
CONNECTION_SERVICE = b"ssh-connection"  # RFC 4252 §5.1: the service started after login
PUBLICKEY = b"publickey"


def fingerprint(key: keys.Key) -> str:
    """The key's fingerprint as OpenSSH prints it (SHA256:...)."""
    return "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")


def peer_name(address: IAddress) -> str:
    """host:port of a TCP peer; the address itself otherwise (a unix socket's peer has no name)."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


class AuditedUserAuth(SSHUserAuthServer):
    """Conch's user authentication, plus one warning per refused attempt naming who tried what."""

    _offered = "no credentials"

    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> Any:
        self._offered = "no key"
        return super().ssh_USERAUTH_REQUEST(packet)

    def auth_publickey(self, packet: bytes) -> Deferred[Any]:
        algorithm, blob, _ = getNS(packet[1:], 2)
        try:
            key = keys.Key.fromString(blob)
        except MALFORMED_KEY:
            # Conch logs this at error level itself; one warning (below) says it all.
            self._offered = f"an unreadable {algorithm.decode('ascii', 'replace')!r} key"
            return fail(UnauthorizedLogin("unsupported or malformed public key"))
        self._offered = f"key {fingerprint(key)}"
        return super().auth_publickey(packet)

    def _ebBadAuth(self, reason: Failure) -> None:
        # "none" is how every client asks which methods exist; IgnoreAuthentication is the
        # answer "this key is listed, now sign with it": neither is a refused attempt.
        if self.method != b"none" and not reason.check(IgnoreAuthentication):
            what = self._offered if self.method == PUBLICKEY else \
                f"method {self.method.decode('ascii', 'replace')!r} (only public keys are accepted)"
            log.warn("manhole: login refused: user {user!r} from {peer} with {what}",
                     user=(self.user or b"").decode("utf-8", "replace"),
                     peer=peer_name(self.transport.transport.getPeer()), what=what)
            self.transport.factory.counters["login.refused"] += 1
        super()._ebBadAuth(reason)


class ConsoleTransport(SSHServerTransport):
    """An SSH server connection that holds to the factory's admission limits until login."""

    factory: ConsoleSSHFactory
    authenticated = False
    _closing = False
    _grace: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._grace = self.factory.clock.callLater(self.factory.login_grace_time, self._grace_expired)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancel_grace()
        self.factory.forget(self)
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return  # refused: nothing more is read into memory
        if not self.authenticated and len(self.buf) + len(data) > PREAUTH_MAX_BUFFER:
            self._refuse("closed.preauth_buffer", DISCONNECT_PROTOCOL_ERROR,
                         f"more than {PREAUTH_MAX_BUFFER} bytes buffered before authentication")
            return
        super().dataReceived(data)

    def getPacket(self) -> bytes | None:
        packet = super().getPacket()
        # Conch keeps the first decrypted block of an unfinished packet in `first`: its
        # announced length tells at once that a packet is too long to wait for.
        first = getattr(self, "first", None)
        if packet is None and first is not None and not self.authenticated and not self._closing:
            (length,) = struct.unpack("!L", first[:4])
            if length > PREAUTH_MAX_PACKET:
                self._refuse("closed.preauth_packet", DISCONNECT_PROTOCOL_ERROR,
                             f"packet of {length} bytes before authentication (at most {PREAUTH_MAX_PACKET})")
        return packet

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        if self._closing:
            return
        try:
            super().dispatchMessage(messageNum, payload)
        except Exception as error:
            if self.authenticated:  # an administrator's session: a bug of ours, worth its traceback
                log.failure("manhole: console connection failed", Failure())
            else:
                log.warn("manhole: malformed SSH message {number} from {peer}: {error!r}; closing",
                         number=messageNum, peer=peer_name(self.transport.getPeer()), error=error)
            self._refuse("closed.malformed", DISCONNECT_PROTOCOL_ERROR, "malformed message")

    def setService(self, service: Any) -> None:
        if service.name == CONNECTION_SERVICE and not self.authenticated:
            self.authenticated = True
            self._cancel_grace()
            if not self.factory.admit(self):
                self._refuse("closed.sessions", DISCONNECT_TOO_MANY_CONNECTIONS,
                             f"too many console sessions (at most {MAX_SESSIONS})")
                return
        super().setService(service)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        # Conch logs every client's ordinary "disconnected by user" at error level: say it at info.
        if reasonCode == DISCONNECT_BY_APPLICATION:
            log.info("manhole: console session closed by the client")
        else:
            super().receiveError(reasonCode, description)

    def _grace_expired(self) -> None:
        self._grace = None
        if not self.authenticated:
            self._refuse("closed.login_grace_time", DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
                         f"no login within {self.factory.login_grace_time:g} s")

    def _cancel_grace(self) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None

    def _refuse(self, counter: str, code: int, why: str) -> None:
        """Close with an SSH disconnect message; count it; keep nothing the peer sent."""
        if self._closing:
            return
        self._closing = True
        self.buf = b""
        self.factory.counters[counter] += 1
        self.sendDisconnect(code, why.encode("ascii"))


class ConsoleSSHFactory(SSHFactory):
    """An SSH server factory with its own host key, portal and admission limits (nothing class-level)."""

    noisy = False  # ManholeService logs one line with the address and host key fingerprint
    protocol = ConsoleTransport
    services = {**SSHFactory.services, b"ssh-userauth": AuditedUserAuth}
    # Conch says, per connection, that without a moduli file it disables the dynamic
    # Diffie-Hellman groups; that is our choice (curve25519 and the fixed groups remain),
    # stated once when the console starts, so its per-connection line is not wanted.
    _log = Logger(observer=lambda event: None)

    def __init__(self, portal: Portal, host_key: keys.Key, clock: IReactorTime, max_unauthenticated: int,
                 login_grace_time: float, counters: Counter[str]) -> None:
        self.portal = portal
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.privateKeys = {host_key.sshType(): host_key}
        self.primes = None  # no moduli file: fixed-group and curve25519 key exchange only
        self.clock = clock
        self.max_unauthenticated = max_unauthenticated
        self.login_grace_time = login_grace_time
        self.unauthenticated: set[ConsoleTransport] = set()
        self.sessions: set[ConsoleTransport] = set()
        self.counters = counters
        self._refusing = False  # new connections are being closed for max_unauthenticated

    def buildProtocol(self, addr: IAddress) -> ConsoleTransport | None:
        """A new connection, or None (closed at once) while `max_unauthenticated` wait for login."""
        if len(self.unauthenticated) >= self.max_unauthenticated:
            if not self._refusing:  # one line per episode, not per connection
                self._refusing = True
                log.warn("manhole: {count} connections are waiting for login; closing new ones until "
                         "fewer wait (max_unauthenticated)", count=len(self.unauthenticated))
            self.counters["refused.unauthenticated"] += 1
            return None
        self._refusing = False
        transport: ConsoleTransport = super().buildProtocol(addr)
        self.unauthenticated.add(transport)
        return transport

    def admit(self, transport: ConsoleTransport) -> bool:
        """Move a connection that has logged in to the sessions; False if they are full."""
        self.unauthenticated.discard(transport)
        if len(self.sessions) >= MAX_SESSIONS:
            return False
        self.sessions.add(transport)
        return True

    def forget(self, transport: ConsoleTransport) -> None:
        self.unauthenticated.discard(transport)
        self.sessions.discard(transport)
