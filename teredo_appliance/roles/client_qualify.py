"""Client qualification, NAT type, maintenance and server failover (RFC 4380 §5.2.1, §5.2.5).

Sans-I/O: the `Qualifier` is fed RAs, timer ticks and resolver answers with `now`, and acts
through three injected callables: `send(payload, ip, port)`, `resolve(name)` (the answer
comes back through `resolved()`) and `changed(qualification | None)`.

NAT type, the way Windows reports it (none / cone / restricted / symmetric):

- A plain RS and a cone RS (RFC 4380 §5.2.1) go to the server's primary address together;
  the server answers the cone one from its secondary address, which only a cone NAT lets
  through. Sending both at once (the RFC tries the cone RS N times first) spares clients
  behind the usual restricted NAT 12 s per qualification.
- Once the primary answered, a plain RS goes to the secondary address: a different mapping
  there means a symmetric NAT. As RFC 4380 §5.2.1 says, Teredo cannot work behind one
  (see §5.2.10: reserve a port on the NAT and set bind_port), so the client stays offline
  with NAT type "symmetric", says so in its log and status, and retries slowly.
- Contacting the secondary address opens the NAT's filter for it, after which a cone RA
  would pass any NAT. A cone answer is therefore believed only if the secondary address
  was not contacted in the last CONE_PROBE_QUIET seconds, and no cone RS is sent then.
- The mapped address equal to our local address means no NAT ("none").

Maintenance: a plain RS to the primary when nothing came from the server for a
randomised refresh interval; a new mapping in the answer is a new qualification. No
answer: connectivity is lost, the server name is re-resolved, and qualification moves on
through the fallback servers in order, then backs off and starts over from the first.
While on a fallback the first server is probed every refresh interval and taken back as
soon as it qualifies us again.

Failover in seconds: with fallback servers configured, the server is checked at least
every FAILOVER_CHECK_INTERVAL (randomised like the refresh), and one check RS left
unanswered for T (RFC 4380 §5.2.1) is enough to qualify through the next server, the
current address kept until that one answers. A dead server is thus left within
FAILOVER_CHECK_INTERVAL + T + two round trips (12 s and a little with the defaults).
RS to one address stay at least T apart, as RFC 4380 §5.2.1 (RFC 4861's
RtrSolicitationInterval) spaces them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from typing import Any

from twisted.logger import Logger

from teredo_appliance.config_model import ClientConfig
from teredo_appliance.roles.nat_behaviour import UNKNOWN, NatBehaviour, classify
from teredo_appliance.stats import Counters
from teredo_appliance.wire.address import TeredoAddress, int_to_ipv4, ipv4_to_int, is_global_ipv4, random_flags
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.ipv6 import MIN_MTU, is_link_local
from teredo_appliance.wire.nd import (
    RS_SOURCE,
    RS_SOURCE_CONE,
    TEREDO_PORT,
    parse_router_advertisement,
    router_solicitation,
)
from teredo_appliance.wire.teredo import NONCE_LENGTH, AuthIndicator, Datagram

OFFLINE, PROBE, QUALIFIED = "offline", "probe", "qualified"  # Windows' client states
NAT_UNKNOWN, NAT_NONE, NAT_CONE, NAT_RESTRICTED, NAT_SYMMETRIC = "unknown", "none", "cone", "restricted", "symmetric"

QUALIFICATION_TIMEOUT = 4.0  # RFC 4380 §5.2.1: T
QUALIFICATION_TRIES = 3  # RFC 4380 §5.2.1: N
REFRESH_RANDOM_LOW = 0.75  # RFC 4380 §5.2: randomised refresh interval is 75-100% of it
MAX_MTU = 65535  # the largest MTU an RA's MTU option may name for a UDP tunnel
RETRY_BACKOFF_MIN = 5.0  # after every server failed: first retry, doubling...
RETRY_BACKOFF_MAX = 120.0  # ...up to this; also the retry period behind a symmetric NAT
RESOLVE_TIMEOUT = 10.0  # a server name that does not resolve by then counts as a failed server
CONE_PROBE_QUIET = 300.0  # how long a NAT may keep its filter open for an address we contacted
FAILOVER_CHECK_INTERVAL = 8.0  # with fallback servers: the longest wait between two checks of the server

_PLAIN, _CONE, _SECONDARY = "plain", "cone", "secondary"  # the three RS kinds
_QUALIFY, _REFRESH, _RETURN = "qualify", "refresh", "return"  # why a round runs


@dataclass(frozen=True)
class Qualification:
    """What a successful qualification gives: enough to configure the TUN and the data path."""

    server: int  # primary IPv4 of the server; also bytes 4-7 of the address
    mapped_ip: int
    mapped_port: int
    flags: int
    prefix: bytes  # the 32-bit Teredo prefix the server advertised
    mtu: int  # from the RA's MTU option, 1280 without one
    nat_type: str

    @property
    def address(self) -> bytes:
        return TeredoAddress(self.server, self.flags, self.mapped_port, self.mapped_ip, self.prefix).pack()

    @property
    def mapping(self) -> tuple[int, int]:
        return self.mapped_ip, self.mapped_port


@dataclass
class _Server:
    name: str  # as configured: a host name or a dotted quad
    secondary: int | None  # configured secondary address; None: primary + 1 (what Windows assumes)
    ip: int | None = None  # resolved primary address

    @property
    def secondary_ip(self) -> int:
        assert self.ip is not None
        return self.secondary if self.secondary is not None else (self.ip + 1) & 0xFFFFFFFF


@dataclass
class _Answer:
    mapped_ip: int
    mapped_port: int
    prefix: bytes
    mtu: int


@dataclass
class _Round:
    """One RS exchange with one server: primary phase, then (for NAT detection) secondary."""

    purpose: str
    index: int  # which server
    server: _Server
    tries: int  # per phase
    detect: bool  # probe the NAT type (qualify / return) or just refresh the mapping
    phase: str = _PLAIN
    sent: int = 0
    deadline: float = 0.0
    nonces: dict[bytes, str] = field(default_factory=dict)
    first: _Answer | None = None


@dataclass
class _Pending:
    """A server name being resolved for a round that starts once it has an address."""

    purpose: str
    index: int
    deadline: float
    avoid: int | None  # an address that just failed: resolving to it again means "next server"


class Qualifier:
    """The client's qualification state machine; one per client role."""

    log = Logger()

    def __init__(
        self,
        config: ClientConfig,
        send: Callable[[bytes, int, int], None],
        resolve: Callable[[str], None],
        changed: Callable[[Qualification | None], None],
        *,
        local_address: Callable[[int], int | None] = lambda server: None,
        local_port: Callable[[], int | None] = lambda: None,
        counters: Counters | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._send = send
        self._resolve = resolve
        self._changed = changed
        self._local_address = local_address
        self._local_port = local_port
        self.behaviour: NatBehaviour = UNKNOWN  # RFC 6081 §5.4, §5.5, from the last NAT detection
        self.counters = Counters() if counters is None else counters
        self._rng = rng or random.SystemRandom()
        secondary = None if config.server_address2 is None else int(config.server_address2)
        self.servers = [_Server(config.server_address, secondary)]
        self.servers += [_Server(name, None) for name in config.fallback_servers]
        self.qualification: Qualification | None = None
        self.nat_type = NAT_UNKNOWN
        self.server_index = 0
        self.last_qualified: float | None = None  # time of the last successful (re)qualification
        self._running = False
        self._main: _Round | None = None  # qualify or refresh
        self._return: _Round | None = None  # probing the first server while on a fallback
        self._pending: dict[str, _Pending] = {}  # by purpose slot: "main" / "return"
        self._chain_left = 0  # servers not yet tried in this pass
        self._retry_at: float | None = None
        self._backoff = RETRY_BACKOFF_MIN
        self._refresh_at: float | None = None
        self._randomized_refresh = self._check_interval
        self._return_at: float | None = None
        self._flags: tuple[tuple[int, int], int] | None = None  # (mapping, flags): RFC 5991 §4
        self._contacted: dict[int, float] = {}  # secondary address -> last RS sent there
        self._failing_over = False  # a check went unanswered: the address stays while the chain runs

    # -- inputs -----------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.qualification is not None:
            return QUALIFIED
        return PROBE if self._main is not None or "main" in self._pending else OFFLINE

    @property
    def server(self) -> _Server:
        return self.servers[self.server_index]

    def start(self, now: float) -> None:
        """Begin qualifying with the first server."""
        self._running = True
        self._new_pass(now)

    def stop(self) -> None:
        """Forget every round and timer; the service tears the tunnel down itself."""
        self._running = False
        self._main = self._return = None
        self._pending.clear()
        self._retry_at = self._refresh_at = self._return_at = None

    def network_changed(self, now: float) -> None:
        """The host's address or default route changed: re-qualify from the first server now."""
        if not self._running:
            return
        self.counters["client.network_change"] += 1
        self._return = None
        self._pending.pop("return", None)
        self._return_at = None
        self._contacted.clear()  # a new uplink: no NAT filter state of ours survives
        self._new_pass(now)

    def heard_from_server(self, now: float) -> None:
        """A packet came from our server (RFC 4380 §5.2.3): the mapping is alive, refresh later."""
        if self.qualification is not None and self._main is None:
            self._refresh_at = now + self._randomized_refresh

    def resolved(self, name: str, ip: int | None, now: float) -> None:
        """The resolver's answer for `name`: an IPv4 address, or None if it failed."""
        for slot, pending in list(self._pending.items()):
            if self.servers[pending.index].name != name:
                continue
            del self._pending[slot]
            if ip is None or not is_global_ipv4(ip):
                why = "does not resolve" if ip is None else f"resolves to non-global {int_to_ipv4(ip)}"
                self.log.warn("Teredo server {name} {why}", name=name, why=why)
                self.counters["client.resolve_failed"] += 1
                self._round_failed(pending.purpose, pending.index, now)
            elif ip == pending.avoid:
                self._round_failed(pending.purpose, pending.index, now)
            else:
                self.servers[pending.index].ip = ip
                self._start_round(pending.purpose, pending.index, now)

    def receive(self, datagram: Datagram, source_ip: int, source_port: int, now: float) -> bool:
        """Offer a datagram carrying an authentication indicator; True if it was one of our RAs.

        Anything that fails a check of RFC 4380 §5.2.1 is counted as drop "ra-<reason>".
        """
        auth = datagram.auth
        if auth is None:
            return False
        found = self._round_of(auth.nonce)
        if found is None:
            self.counters.drop("ra-unexpected")
            return True
        round_, kind = found
        reason, answer = check_advertisement(datagram, source_ip, source_port, round_.server, kind,
                                             self.config.prefix.network_address.packed[:4])
        if answer is None:
            self.counters.drop("ra-" + reason)
            return True
        if kind == _CONE and self._filter_open(round_.server.secondary_ip, now):
            self.counters.drop("ra-cone-ambiguous")  # our own RS may have opened the NAT for it
            return True
        self.counters["client.ra"] += 1
        self._answered(round_, kind, answer, now)
        return True

    def status(self) -> dict[str, Any]:
        q = self.qualification
        server = self.server
        return {
            "state": self.state,
            "server": server.name,
            "server_ip": None if server.ip is None else int_to_ipv4(server.ip),
            "nat_type": self.nat_type,
            **self.behaviour.report(),
            "mapped": None if q is None else f"{int_to_ipv4(q.mapped_ip)}:{q.mapped_port}",
            "address": None if q is None else _ipv6(q.address),
            "advertised_mtu": None if q is None else q.mtu,  # reported; the TUN keeps the configured mtu
            "last_qualified": self.last_qualified,
        }

    # -- timers -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times = [r.deadline for r in (self._main, self._return) if r is not None]
        times += [p.deadline for p in self._pending.values()]
        times += [t for t in (self._retry_at, self._return_at) if t is not None]
        if self._refresh_at is not None and self._main is None:
            times.append(self._refresh_at)
        return min(times, default=None)

    def on_timer(self, now: float) -> None:
        for slot, pending in list(self._pending.items()):
            if now >= pending.deadline:
                del self._pending[slot]
                self.log.warn("Teredo server {name}: no address after {t:.0f} s",
                              name=self.servers[pending.index].name, t=RESOLVE_TIMEOUT)
                self.counters["client.resolve_failed"] += 1
                self._round_failed(pending.purpose, pending.index, now)
        self._tick(self._main, now)
        self._tick(self._return, now)  # read after the main round's outcome, which may end it
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            self._new_pass(now)
        if self._main is None and self._refresh_at is not None and now >= self._refresh_at:
            self._refresh_at = None
            self._start_round(_REFRESH, self.server_index, now)
        if self._return_at is not None and now >= self._return_at:
            self._return_at = None
            self._begin(_RETURN, 0, now)

    def _tick(self, round_: _Round | None, now: float) -> None:
        if round_ is not None and now >= round_.deadline:
            if round_.sent < round_.tries:
                self._solicit(round_, now)
            else:
                self._timed_out(round_, now)

    # -- rounds -----------------------------------------------------------------------------

    def _new_pass(self, now: float) -> None:
        """Try every server once, in order, starting with the first."""
        self._main = None
        self._pending.pop("main", None)
        self._retry_at = self._refresh_at = None
        self._failing_over = False
        self._chain_left = len(self.servers)
        self._begin(_QUALIFY, 0, now)

    def _begin(self, purpose: str, index: int, now: float, avoid: int | None = None) -> None:
        """Start a round with server `index`, resolving its name first when needed."""
        server = self.servers[index]
        if purpose == _QUALIFY:
            self.server_index = index
            server.ip = None  # re-resolve on every qualification: the name may have moved
        if server.ip is None:
            try:
                literal = ipv4_to_int(server.name)
            except OSError:
                slot = "return" if purpose == _RETURN else "main"
                self._pending[slot] = _Pending(purpose, index, now + RESOLVE_TIMEOUT, avoid)
                self._resolve(server.name)
                return
            if literal == avoid:
                self._round_failed(purpose, index, now)
                return
            server.ip = literal
        self._start_round(purpose, index, now)

    def _start_round(self, purpose: str, index: int, now: float) -> None:
        server = self.servers[index]
        if purpose == _REFRESH:
            tries = 1 if self._can_fail_over else QUALIFICATION_TRIES
            round_ = _Round(purpose, index, server, tries, detect=False)
            self._randomized_refresh = self._rng.uniform(REFRESH_RANDOM_LOW, 1.0) * self._check_interval
        else:
            tries = 1 if purpose == _RETURN else QUALIFICATION_TRIES  # a probe, repeated every interval
            round_ = _Round(purpose, index, server, tries, detect=True)
        if purpose == _RETURN:
            self._return = round_
        else:
            self._main = round_
        self._solicit(round_, now)

    def _solicit(self, round_: _Round, now: float) -> None:
        """(Re)send the RS of the round's current phase with fresh nonces (RFC 4380 §5.2.2)."""
        server = round_.server
        assert server.ip is not None
        round_.sent += 1
        round_.deadline = now + QUALIFICATION_TIMEOUT
        if round_.phase == _SECONDARY:
            self._contacted[server.secondary_ip] = now
            self._rs(round_, _SECONDARY, server.secondary_ip)
            return
        if round_.detect and not self._filter_open(server.secondary_ip, now):
            self._rs(round_, _CONE, server.ip)  # first, so its answer normally arrives first
        self._rs(round_, _PLAIN, server.ip)

    def _rs(self, round_: _Round, kind: str, ip: int) -> None:
        nonce = self._rng.getrandbits(8 * NONCE_LENGTH).to_bytes(NONCE_LENGTH, "big")
        round_.nonces[nonce] = kind
        self.counters["client.rs"] += 1
        self._send(AuthIndicator(nonce).pack() + router_solicitation(cone=kind == _CONE), ip, TEREDO_PORT)

    @property
    def _can_fail_over(self) -> bool:
        return len(self.servers) > 1

    @property
    def _check_interval(self) -> float:
        """How long the server may stay silent before an RS checks it (RFC 4380 §5.2.5, shortened to fail over)."""
        if self._can_fail_over:
            return min(self.config.refresh_interval, FAILOVER_CHECK_INTERVAL)
        return self.config.refresh_interval

    def _filter_open(self, secondary: int, now: float) -> bool:
        contacted = self._contacted.get(secondary)
        return contacted is not None and now - contacted < CONE_PROBE_QUIET

    def _round_of(self, nonce: bytes) -> tuple[_Round, str] | None:
        for round_ in (self._main, self._return):
            if round_ is not None and nonce in round_.nonces:
                return round_, round_.nonces[nonce]
        return None

    def _answered(self, round_: _Round, kind: str, answer: _Answer, now: float) -> None:
        if not round_.detect:
            self._finish(round_, answer, self.nat_type, now)
        elif kind == _CONE:
            self._finish(round_, answer, NAT_CONE, now)
        elif kind == _PLAIN:
            if round_.phase != _PLAIN:
                return  # a late duplicate of the primary's answer
            if self._local_address(round_.server.ip or 0) == answer.mapped_ip:
                self._finish(round_, answer, NAT_NONE, now)
                return
            round_.first = answer
            round_.phase = _SECONDARY
            round_.sent = 0
            # A late cone answer stays recognised, to be counted as ambiguous rather than unexpected.
            round_.nonces = {n: k for n, k in round_.nonces.items() if k == _CONE}
            self._solicit(round_, now)
        else:
            assert round_.first is not None
            first = round_.first
            self.behaviour = classify(self._local_port(), first.mapped_port, answer.mapped_port)
            if (answer.mapped_ip, answer.mapped_port) != (first.mapped_ip, first.mapped_port):
                self._symmetric(round_, first, answer, now)
            else:
                self._finish(round_, first, NAT_RESTRICTED, now)

    def _finish(self, round_: _Round, answer: _Answer, nat_type: str, now: float) -> None:
        if round_.purpose == _RETURN:
            self._return = None
            self._main = None
            self._pending.pop("main", None)
        else:
            self._main = None
        server = round_.server
        assert server.ip is not None
        mapping = (answer.mapped_ip, answer.mapped_port)
        if self._flags is None or self._flags[0] != mapping:
            self._flags = (mapping, random_flags(self._rng.getrandbits(16)))  # RFC 5991 §4
        old = self.qualification
        new = Qualification(server.ip, answer.mapped_ip, answer.mapped_port, self._flags[1],
                            answer.prefix, answer.mtu, nat_type)
        self.server_index = round_.index
        self.nat_type = nat_type
        self.qualification = new
        self.last_qualified = now
        self._refresh_at = now + self._randomized_refresh
        self._retry_at = None
        self._failing_over = False
        self._backoff = RETRY_BACKOFF_MIN
        if not round_.index:
            self._return_at = None
        elif self._return_at is None and self._return is None:  # a refresh must not postpone it
            self._return_at = now + self.config.refresh_interval
        if new != old:
            self.counters["client.qualified"] += 1
            self.log.info(
                "Qualified with Teredo server {server} ({ip}): address {address}, mapping {mip}:{mport}, "
                "NAT type: {nat}",
                server=server.name, ip=int_to_ipv4(server.ip), address=_ipv6(new.address),
                mip=int_to_ipv4(new.mapped_ip), mport=new.mapped_port, nat=nat_type,
            )
            self._changed(new)

    def _symmetric(self, round_: _Round, first: _Answer, second: _Answer, now: float) -> None:
        server = round_.server
        mappings = f"{int_to_ipv4(first.mapped_ip)}:{first.mapped_port} and {int_to_ipv4(second.mapped_ip)}:" \
                   f"{second.mapped_port}"
        if self.config.extensions.symmetric_nat:
            # RFC 6081 §5.2: configure the address from the primary's mapping all the same;
            # peers whose NAT filtering lets our other mappings in are reached with bubbles.
            if self.qualification is None or self.qualification.nat_type != NAT_SYMMETRIC:
                self.counters["client.symmetric_nat"] += 1
                self.log.info("NAT type: symmetric (server {server} saw {mappings}): qualifying with the "
                              "Symmetric NAT Support Extension (RFC 6081); peers behind port-restricted or "
                              "symmetric NATs stay out of reach", server=server.name, mappings=mappings)
            self._finish(round_, first, NAT_SYMMETRIC, now)
            return
        if round_.purpose == _RETURN:
            self._return = None
            return
        self._main = None
        self.nat_type = NAT_SYMMETRIC
        self.counters["client.symmetric_nat"] += 1
        self.log.warn(
            "NAT type: symmetric (server {server} saw {m1} on its primary address and {m2} on its secondary): "
            "Teredo cannot work behind this NAT (RFC 4380 §5.2.10: forward a UDP port to this host and set "
            "bind_port); staying offline, next try in {retry:.0f} s",
            server=server.name, m1=f"{int_to_ipv4(first.mapped_ip)}:{first.mapped_port}",
            m2=f"{int_to_ipv4(second.mapped_ip)}:{second.mapped_port}", retry=RETRY_BACKOFF_MAX,
        )
        self._lose()
        self._retry_at = now + RETRY_BACKOFF_MAX

    def _timed_out(self, round_: _Round, now: float) -> None:
        server = round_.server
        if round_.purpose == _RETURN:
            self._return = None
            self._return_at = now + self.config.refresh_interval
            return
        self._main = None
        where = f" on its secondary address {int_to_ipv4(server.secondary_ip)}" if round_.phase == _SECONDARY else ""
        self.log.warn("Teredo server {name} ({ip}) did not answer{where} after {n} tries",
                      name=server.name, ip=int_to_ipv4(server.ip or 0), where=where, n=round_.tries)
        self.counters["client.server_timeout"] += 1
        if round_.purpose == _REFRESH:
            # RFC 4380 §5.2.5: connectivity is gone. Re-resolve this server: a new address
            # gets a try, the same one (or a literal) means going on to the next server.
            # With somewhere to go, the address stays until the next server answers.
            failed = server.ip
            if self._can_fail_over:
                self._failing_over = True
                self.counters["client.failover"] += 1
            else:
                self._lose()
            self._refresh_at = None
            self._chain_left = len(self.servers)
            self._begin(_QUALIFY, round_.index, now, avoid=failed)
        else:
            self._round_failed(_QUALIFY, round_.index, now)

    def _round_failed(self, purpose: str, index: int, now: float) -> None:
        """A server did not qualify us (timeout, no address): go on along the chain."""
        if purpose == _RETURN:
            self._return_at = now + self.config.refresh_interval
            return
        self._chain_left -= 1
        if not self._failing_over or self._chain_left <= 0:
            self._lose()
        if self._chain_left > 0:
            self._begin(_QUALIFY, (index + 1) % len(self.servers), now)
            return
        self.counters["client.offline"] += 1
        self.log.warn("No Teredo server answered; offline, next try in {t:.0f} s", t=self._backoff)
        self.server_index = 0
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_BACKOFF_MAX)

    def _lose(self) -> None:
        """Drop the current qualification (if any) and tell the service."""
        self._failing_over = False
        self._refresh_at = self._return_at = None
        self._return = None
        if self.qualification is not None:
            self.qualification = None
            self.log.info("Teredo connectivity lost")
            self._changed(None)



def check_advertisement(
    datagram: Datagram, source_ip: int, source_port: int, server: _Server, kind: str, teredo_prefix: bytes
) -> tuple[str, _Answer | None]:
    """RFC 4380 §5.2.1 validity of an RA answering an RS of `kind`: ("", answer) or (reason, None).

    The nonce was already matched by the caller; this checks everything else. The
    advertised prefix must be `teredo_prefix` (the configured /32, 4 bytes): a server
    may not move us into another prefix, let alone a multicast or link-local one.
    """
    assert datagram.auth is not None and server.ip is not None
    expected_ip = server.ip if kind == _PLAIN else server.secondary_ip
    if source_port != TEREDO_PORT:
        return "port", None
    if source_ip != expected_ip:
        return "source", None
    if datagram.auth.confirmation != 0:
        return "confirmation", None
    origin = datagram.origin
    if origin is None:
        return "no-origin", None
    try:
        ra = parse_router_advertisement(datagram.packet, datagram.header)
    except ParseError as error:
        return error.reason.removeprefix("ra-"), None
    if ra.destination != (RS_SOURCE_CONE if kind == _CONE else RS_SOURCE):
        return "destination", None
    if not is_link_local(ra.source):
        return "source-not-link-local", None
    if len(ra.prefixes) != 1:
        return "prefix-count", None
    prefix, length = ra.prefixes[0]
    if prefix[0] == 0xFF or (prefix[0] == 0xFE and prefix[1] & 0xC0 == 0x80):
        return "prefix-scope", None  # multicast ff00::/8, link-local fe80::/10
    if length != 64 or prefix[:4] != teredo_prefix or int.from_bytes(prefix[4:8], "big") != server.ip:
        return "prefix", None
    if ra.mtu is not None and not MIN_MTU <= ra.mtu <= MAX_MTU:
        return "mtu", None
    if not is_global_ipv4(origin.ip):
        return "mapped-not-global", None
    return "", _Answer(origin.ip, origin.port, prefix[:4], ra.mtu or MIN_MTU)


def _ipv6(address: bytes) -> str:
    return str(IPv6Address(address))
