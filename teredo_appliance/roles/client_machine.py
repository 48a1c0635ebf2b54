"""Client qualification, NAT type, maintenance and server failover (RFC 4380 §5.2.1, §5.2.5).

Sans-I/O, like every role machine: the `Qualifier` is fed RAs, timer ticks and resolver
answers with `now`, says when it next wants to be woken (`next_deadline()`), and acts
through injected callables: `send(payload, ip, port)`, `resolve(name)` (the answer comes
back through `resolved()`), `changed(qualification | None)` and `log(level, format, **fields)`.

Two tracks of activity, each in one explicit `Step`: the main one (resolve a server's name,
solicit it, wait to refresh or to retry) and, while a fallback server is in use, the
return probe of the first server. The RA checks are `wire.nd.check_qualification_ra`; the
failover order and backoff are `client_failover.ServerChain`.

NAT type, the way Windows reports it (none / cone / restricted / symmetric):

- A plain RS and a cone RS (RFC 4380 §5.2.1) go to the server's primary address together;
  the server answers the cone one from its secondary address, which only a cone NAT lets
  through. Sending both at once (the RFC tries the cone RS N times first) spares clients
  behind the usual restricted NAT 12 s per qualification.
- Once the primary answered, a plain RS goes to the secondary address: a different mapping
  there means a symmetric NAT. With the Symmetric NAT Support extension (RFC 6081 §5.2,
  `extensions.symmetric_nat`, on by default) the client qualifies from the primary's
  mapping all the same. Without it, as RFC 4380 §5.2.1 says, Teredo cannot work behind
  one (see §5.2.10: reserve a port on the NAT and set bind_port), so the client stays
  offline with NAT type "symmetric", says so in its log and status, and retries slowly.
  The two mappings also tell whether the NAT preserves ports or allocates them in
  sequence (RFC 6081 §5.4, §5.5: `nat_behaviour.classify`).
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
from enum import Enum, StrEnum
from ipaddress import IPv6Address
from typing import Any, Protocol

from teredo_appliance.config_model import ClientConfig
from teredo_appliance.roles.client_failover import RETRY_BACKOFF_MAX, Server, ServerChain
from teredo_appliance.roles.nat_behaviour import UNKNOWN, NatBehaviour, classify
from teredo_appliance.stats import Counters
from teredo_appliance.wire.address import TeredoAddress, int_to_ipv4, ipv4_to_int, is_global_ipv4, random_flags
from teredo_appliance.wire.constants import TEREDO_PORT
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.nd import QualificationAnswer, check_qualification_ra, router_solicitation
from teredo_appliance.wire.teredo import NONCE_LENGTH, AuthIndicator, Datagram


class ClientState(StrEnum):
    """Windows' client states, as status() reports them."""

    OFFLINE = "offline"
    PROBE = "probe"
    QUALIFIED = "qualified"


class NatType(StrEnum):
    """The NAT type, the way Windows reports it."""

    UNKNOWN = "unknown"
    NONE = "none"
    CONE = "cone"
    RESTRICTED = "restricted"
    SYMMETRIC = "symmetric"


OFFLINE, PROBE, QUALIFIED = ClientState
NAT_UNKNOWN, NAT_NONE, NAT_CONE, NAT_RESTRICTED, NAT_SYMMETRIC = NatType

QUALIFICATION_TIMEOUT = 4.0  # RFC 4380 §5.2.1: T
QUALIFICATION_TRIES = 3  # RFC 4380 §5.2.1: N
REFRESH_RANDOM_LOW = 0.75  # RFC 4380 §5.2: randomised refresh interval is 75-100% of it
RESOLVE_TIMEOUT = 10.0  # a server name that does not resolve by then counts as a failed server
CONE_PROBE_QUIET = 300.0  # how long a NAT may keep its filter open for an address we contacted
FAILOVER_CHECK_INTERVAL = 8.0  # with fallback servers: the longest wait between two checks of the server


class RSKind(Enum):
    """The three Router Solicitations of a qualification (RFC 4380 §5.2.1)."""

    PLAIN = "plain"  # to the primary address
    CONE = "cone"  # to the primary, answered from the secondary: only a cone NAT lets it in
    SECONDARY = "secondary"  # plain, to the secondary address: a new mapping means symmetric


class Purpose(Enum):
    """Why a round of solicitations runs."""

    QUALIFY = "qualify"
    REFRESH = "refresh"  # keep the mapping alive, with the server in use
    RETURN = "return"  # probe the first server while a fallback is in use


class Step(Enum):
    """What one track of activity is doing; each step has one deadline."""

    IDLE = "idle"  # nothing (stopped; the return track while on the first server)
    RESOLVING = "resolving"  # waiting for a server name's address
    SOLICITING = "soliciting"  # RSs out: resend or give up at the deadline
    WAITING = "waiting"  # main: refresh (qualified) or retry (offline); return: probe again


class Log(Protocol):
    def __call__(self, level: str, format: str, **fields: Any) -> None: ...


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
class _Round:
    """One RS exchange with one server: primary phase, then (for NAT detection) secondary."""

    purpose: Purpose
    index: int  # which server
    server: Server
    tries: int  # per phase
    detect: bool  # probe the NAT type (qualify / return) or just refresh the mapping
    phase: RSKind = RSKind.PLAIN
    sent: int = 0
    deadline: float = 0.0
    nonces: dict[bytes, RSKind] = field(default_factory=dict)
    first: QualificationAnswer | None = None


@dataclass
class _Pending:
    """A server name being resolved for a round that starts once it has an address."""

    purpose: Purpose
    index: int
    deadline: float
    avoid: int | None  # an address that just failed: resolving to it again means "next server"


@dataclass
class _Track:
    """One line of activity and its step; only the fields of that step are set."""

    step: Step = Step.IDLE
    round: _Round | None = None  # SOLICITING
    pending: _Pending | None = None  # RESOLVING
    until: float = 0.0  # WAITING

    def idle(self) -> None:
        self.step, self.round, self.pending = Step.IDLE, None, None

    def wait(self, until: float) -> None:
        self.idle()
        self.step, self.until = Step.WAITING, until

    def resolve(self, pending: _Pending) -> None:
        self.idle()
        self.step, self.pending = Step.RESOLVING, pending

    def solicit(self, round_: _Round) -> None:
        self.idle()
        self.step, self.round = Step.SOLICITING, round_

    @property
    def deadline(self) -> float | None:
        if self.round is not None:
            return self.round.deadline
        if self.pending is not None:
            return self.pending.deadline
        return self.until if self.step is Step.WAITING else None

    def busy_with(self) -> int | None:
        """The server index a round or resolution of this track holds, if any."""
        held = self.round or self.pending
        return None if held is None else held.index


def _no_log(level: str, format: str, **fields: Any) -> None:
    """For machines driven by tests that do not look at the log."""


class Qualifier:
    """The client's qualification state machine; one per client role."""

    def __init__(
        self,
        config: ClientConfig,
        send: Callable[[bytes, int, int], None],
        resolve: Callable[[str], None],
        changed: Callable[[Qualification | None], None],
        *,
        log: Log = _no_log,
        local_address: Callable[[int], int | None] = lambda server: None,
        local_port: Callable[[], int | None] = lambda: None,
        counters: Counters | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._send = send
        self._resolve = resolve
        self._changed = changed
        self._log = log
        self._local_address = local_address
        self._local_port = local_port
        self.behaviour: NatBehaviour = UNKNOWN  # RFC 6081 §5.4, §5.5, from the last NAT detection
        self.counters = Counters() if counters is None else counters
        self._rng = rng or random.SystemRandom()
        secondary = None if config.server_address2 is None else int(config.server_address2)
        self.chain = ServerChain(config.server_address, secondary, config.fallback_servers)
        self.qualification: Qualification | None = None
        self.nat_type = NatType.UNKNOWN
        self.last_qualified: float | None = None  # time of the last successful (re)qualification
        self._running = False
        self._main = _Track()  # qualify, refresh, retry
        self._return = _Track()  # probing the first server while on a fallback
        self._randomized_refresh = self._check_interval
        self._flags: tuple[tuple[int, int], int] | None = None  # (mapping, flags): RFC 5991 §4
        self._contacted: dict[int, float] = {}  # secondary address -> last RS sent there
        self._failing_over = False  # a check went unanswered: the address stays while the chain runs

    # -- inputs -----------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        if self.qualification is not None:
            return ClientState.QUALIFIED
        return ClientState.PROBE if self._main.step in (Step.SOLICITING, Step.RESOLVING) else ClientState.OFFLINE

    @property
    def server(self) -> Server:
        return self.chain.current

    def start(self, now: float) -> None:
        """Begin qualifying with the first server."""
        self._running = True
        self._new_pass(now)

    def stop(self) -> None:
        """Forget every round and timer; the service tears the tunnel down itself."""
        self._running = False
        self._main.idle()
        self._return.idle()

    def network_changed(self, now: float) -> None:
        """The host's address or default route changed: re-qualify from the first server now."""
        if not self._running:
            return
        self.counters["client.network_change"] += 1
        self._return.idle()
        self._contacted.clear()  # a new uplink: no NAT filter state of ours survives
        self._new_pass(now)

    def heard_from_server(self, now: float) -> None:
        """A packet came from our server (RFC 4380 §5.2.3): the mapping is alive, refresh later."""
        if self.qualification is not None and self._main.step is Step.WAITING:
            self._main.wait(now + self._randomized_refresh)

    def resolved(self, name: str, ip: int | None, now: float) -> None:
        """The resolver's answer for `name`: an IPv4 address, or None if it failed."""
        for track in (self._main, self._return):
            pending = track.pending
            if pending is None or self.chain[pending.index].name != name:
                continue
            track.idle()
            if ip is None or not is_global_ipv4(ip):
                why = "does not resolve" if ip is None else f"resolves to non-global {int_to_ipv4(ip)}"
                self._log("warn", "Teredo server {name} {why}", name=name, why=why)
                self.counters["client.resolve_failed"] += 1
                self._round_failed(pending.purpose, pending.index, now)
            elif ip == pending.avoid:
                self._round_failed(pending.purpose, pending.index, now)
            else:
                self.chain[pending.index].ip = ip
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
        server = round_.server
        assert server.ip is not None
        try:
            answer = check_qualification_ra(
                datagram, source_ip, source_port, cone=kind is RSKind.CONE, server_ip=server.ip,
                expected_source=server.ip if kind is RSKind.PLAIN else server.secondary_ip,
                teredo_prefix=self.config.prefix.network_address.packed[:4])
        except ParseError as error:
            self.counters.drop("ra-" + error.reason)
            return True
        if kind is RSKind.CONE and self._filter_open(server.secondary_ip, now):
            self.counters.drop("ra-cone-ambiguous")  # our own RS may have opened the NAT for it
            return True
        self.counters["client.ra"] += 1
        self._answered(round_, kind, answer, now)
        return True

    def status(self) -> dict[str, Any]:
        q = self.qualification
        server = self.server
        return {
            "state": str(self.state),
            "server": server.name,
            "server_ip": None if server.ip is None else int_to_ipv4(server.ip),
            "nat_type": str(self.nat_type),
            **self.behaviour.report(),
            "mapped": None if q is None else f"{int_to_ipv4(q.mapped_ip)}:{q.mapped_port}",
            "address": None if q is None else _ipv6(q.address),
            "advertised_mtu": None if q is None else q.mtu,  # reported; the TUN keeps the configured mtu
            "last_qualified": self.last_qualified,
        }

    # -- reconfiguration --------------------------------------------------------------------

    def can_reconfigure(self, config: ClientConfig) -> bool:
        """Whether `config`'s fallback chain can replace ours now: not while a fallback server
        is in use or being tried (rounds and resolutions hold its place in the chain)."""
        if config.fallback_servers == self.config.fallback_servers:
            return True
        held = {self._main.busy_with(), self._return.busy_with()} - {None}
        return {self.chain.index, *held} <= {0}

    def reconfigure(self, config: ClientConfig, now: float) -> None:
        """Take a new refresh_interval and fallback chain without losing the qualification;
        a shorter interval is heeded at once. The caller checked can_reconfigure()."""
        old, old_check, self.config = self.config, self._check_interval, config
        if config.fallback_servers != old.fallback_servers:
            self.chain.replace_fallbacks(config.fallback_servers)
        if self._check_interval != old_check:  # a new interval, or fallbacks added or removed
            self._randomized_refresh = self._rng.uniform(REFRESH_RANDOM_LOW, 1.0) * self._check_interval
            if self._main.step is Step.WAITING and self.qualification is not None:
                self._main.wait(min(self._main.until, now + self._randomized_refresh))
        if config.refresh_interval != old.refresh_interval and self._return.step is Step.WAITING:
            self._return.wait(min(self._return.until, now + config.refresh_interval))

    # -- timers -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return min((d for d in (self._main.deadline, self._return.deadline) if d is not None), default=None)

    def on_timer(self, now: float) -> None:
        for track in (self._main, self._return):
            deadline = track.deadline
            if deadline is None or now < deadline:
                continue
            if track.step is Step.RESOLVING:
                pending = track.pending
                assert pending is not None
                track.idle()
                self._log("warn", "Teredo server {name}: no address after {t:.0f} s",
                          name=self.chain[pending.index].name, t=RESOLVE_TIMEOUT)
                self.counters["client.resolve_failed"] += 1
                self._round_failed(pending.purpose, pending.index, now)
            elif track.step is Step.SOLICITING:
                round_ = track.round
                assert round_ is not None
                if round_.sent < round_.tries:
                    self._solicit(round_, now)
                else:
                    self._timed_out(round_, now)
            elif track is self._return:
                self._begin(Purpose.RETURN, 0, now)
            elif self.qualification is not None:
                self._start_round(Purpose.REFRESH, self.chain.index, now)
            else:
                self._new_pass(now)

    # -- rounds -----------------------------------------------------------------------------

    def _track(self, purpose: Purpose) -> _Track:
        return self._return if purpose is Purpose.RETURN else self._main

    def _new_pass(self, now: float) -> None:
        """Try every server once, in order, starting with the first."""
        self._main.idle()
        self._failing_over = False
        self.chain.new_pass()
        self._begin(Purpose.QUALIFY, 0, now)

    def _begin(self, purpose: Purpose, index: int, now: float, avoid: int | None = None) -> None:
        """Start a round with server `index`, resolving its name first when needed."""
        server = self.chain[index]
        if purpose is Purpose.QUALIFY:
            self.chain.index = index
            server.ip = None  # re-resolve on every qualification: the name may have moved
        if server.ip is None:
            try:
                literal = ipv4_to_int(server.name)
            except OSError:
                self._track(purpose).resolve(_Pending(purpose, index, now + RESOLVE_TIMEOUT, avoid))
                self._resolve(server.name)
                return
            if literal == avoid:
                self._round_failed(purpose, index, now)
                return
            server.ip = literal
        self._start_round(purpose, index, now)

    def _start_round(self, purpose: Purpose, index: int, now: float) -> None:
        server = self.chain[index]
        if purpose is Purpose.REFRESH:
            tries = 1 if self._can_fail_over else QUALIFICATION_TRIES  # one unanswered check: fail over
            round_ = _Round(purpose, index, server, tries, detect=False)
            self._randomized_refresh = self._rng.uniform(REFRESH_RANDOM_LOW, 1.0) * self._check_interval
        else:
            tries = 1 if purpose is Purpose.RETURN else QUALIFICATION_TRIES  # a probe, repeated every interval
            round_ = _Round(purpose, index, server, tries, detect=True)
        self._track(purpose).solicit(round_)
        self._solicit(round_, now)

    def _solicit(self, round_: _Round, now: float) -> None:
        """(Re)send the RS of the round's current phase with fresh nonces (RFC 4380 §5.2.2)."""
        server = round_.server
        assert server.ip is not None
        round_.sent += 1
        round_.deadline = now + QUALIFICATION_TIMEOUT
        if round_.phase is RSKind.SECONDARY:
            self._contacted[server.secondary_ip] = now
            self._rs(round_, RSKind.SECONDARY, server.secondary_ip)
            return
        if round_.detect and not self._filter_open(server.secondary_ip, now):
            self._rs(round_, RSKind.CONE, server.ip)  # first, so its answer normally arrives first
        self._rs(round_, RSKind.PLAIN, server.ip)

    def _rs(self, round_: _Round, kind: RSKind, ip: int) -> None:
        nonce = self._rng.getrandbits(8 * NONCE_LENGTH).to_bytes(NONCE_LENGTH, "big")
        round_.nonces[nonce] = kind
        self.counters["client.rs"] += 1
        self._send(AuthIndicator(nonce).pack() + router_solicitation(cone=kind is RSKind.CONE), ip, TEREDO_PORT)

    @property
    def _can_fail_over(self) -> bool:
        return len(self.chain) > 1

    @property
    def _check_interval(self) -> float:
        """How long the server may stay silent before an RS checks it (RFC 4380 §5.2.5, shortened to fail over)."""
        if self._can_fail_over:
            return min(self.config.refresh_interval, FAILOVER_CHECK_INTERVAL)
        return self.config.refresh_interval

    def _filter_open(self, secondary: int, now: float) -> bool:
        contacted = self._contacted.get(secondary)
        return contacted is not None and now - contacted < CONE_PROBE_QUIET

    def _round_of(self, nonce: bytes) -> tuple[_Round, RSKind] | None:
        for round_ in (self._main.round, self._return.round):
            if round_ is not None and nonce in round_.nonces:
                return round_, round_.nonces[nonce]
        return None

    def _answered(self, round_: _Round, kind: RSKind, answer: QualificationAnswer, now: float) -> None:
        if not round_.detect:
            self._finish(round_, answer, self.nat_type, now)
        elif kind is RSKind.CONE:
            self._finish(round_, answer, NatType.CONE, now)
        elif kind is RSKind.PLAIN:
            if round_.phase is not RSKind.PLAIN:
                return  # a late duplicate of the primary's answer
            if self._local_address(round_.server.ip or 0) == answer.mapped_ip:
                self._finish(round_, answer, NatType.NONE, now)
                return
            round_.first = answer
            round_.phase = RSKind.SECONDARY
            round_.sent = 0
            # A late cone answer stays recognised, to be counted as ambiguous rather than unexpected.
            round_.nonces = {n: k for n, k in round_.nonces.items() if k is RSKind.CONE}
            self._solicit(round_, now)
        else:
            assert round_.first is not None
            first = round_.first
            self.behaviour = classify(self._local_port(), first.mapped_port, answer.mapped_port)
            if (answer.mapped_ip, answer.mapped_port) != (first.mapped_ip, first.mapped_port):
                self._symmetric(round_, first, answer, now)
            else:
                self._finish(round_, first, NatType.RESTRICTED, now)

    def _finish(self, round_: _Round, answer: QualificationAnswer, nat_type: NatType, now: float) -> None:
        if round_.purpose is Purpose.RETURN:
            self._return.idle()  # and the main track's round, if any, is superseded below
        server = round_.server
        assert server.ip is not None
        mapping = (answer.mapped_ip, answer.mapped_port)
        if self._flags is None or self._flags[0] != mapping:
            self._flags = (mapping, random_flags(self._rng.getrandbits(16)))  # RFC 5991 §4
        old = self.qualification
        new = Qualification(server.ip, answer.mapped_ip, answer.mapped_port, self._flags[1],
                            answer.prefix, answer.mtu, nat_type)
        self.chain.qualified(round_.index)
        self.nat_type = nat_type
        self.qualification = new
        self.last_qualified = now
        self._failing_over = False
        self._main.wait(now + self._randomized_refresh)
        if not round_.index:
            if self._return.step is Step.WAITING:
                self._return.idle()
        elif self._return.step is Step.IDLE:  # a refresh must not postpone a probe under way
            self._return.wait(now + self.config.refresh_interval)
        if new != old:
            self.counters["client.qualified"] += 1
            self._log(
                "info",
                "Qualified with Teredo server {server} ({ip}): address {address}, mapping {mip}:{mport}, "
                "NAT type: {nat}",
                server=server.name, ip=int_to_ipv4(server.ip), address=_ipv6(new.address),
                mip=int_to_ipv4(new.mapped_ip), mport=new.mapped_port, nat=str(nat_type),
            )
            self._changed(new)

    def _symmetric(self, round_: _Round, first: QualificationAnswer, second: QualificationAnswer,
                   now: float) -> None:
        server = round_.server
        m1 = f"{int_to_ipv4(first.mapped_ip)}:{first.mapped_port}"
        m2 = f"{int_to_ipv4(second.mapped_ip)}:{second.mapped_port}"
        if self.config.extensions.symmetric_nat:
            # RFC 6081 §5.2: configure the address from the primary's mapping all the same;
            # peers whose NAT filtering lets our other mappings in are reached with bubbles.
            if self.qualification is None or self.qualification.nat_type != NatType.SYMMETRIC:
                self.counters["client.symmetric_nat"] += 1
                self._log("info", "NAT type: symmetric (server {server} saw {m1} and {m2}): qualifying with the "
                          "Symmetric NAT Support Extension (RFC 6081); peers behind port-restricted or "
                          "symmetric NATs stay out of reach", server=server.name, m1=m1, m2=m2)
            self._finish(round_, first, NatType.SYMMETRIC, now)
            return
        if round_.purpose is Purpose.RETURN:
            self._return.idle()
            return
        self.nat_type = NatType.SYMMETRIC
        self.counters["client.symmetric_nat"] += 1
        self._log(
            "warn",
            "NAT type: symmetric (server {server} saw {m1} on its primary address and {m2} on its secondary): "
            "Teredo cannot work behind this NAT (RFC 4380 §5.2.10: forward a UDP port to this host and set "
            "bind_port); staying offline, next try in {retry:.0f} s",
            server=server.name, m1=m1, m2=m2, retry=RETRY_BACKOFF_MAX,
        )
        self._lose()
        self._main.wait(now + RETRY_BACKOFF_MAX)

    def _timed_out(self, round_: _Round, now: float) -> None:
        server = round_.server
        if round_.purpose is Purpose.RETURN:
            self._return.wait(now + self.config.refresh_interval)
            return
        self._main.idle()
        where = (f" on its secondary address {int_to_ipv4(server.secondary_ip)}"
                 if round_.phase is RSKind.SECONDARY else "")
        self._log("warn", "Teredo server {name} ({ip}) did not answer{where} after {n} tries",
                  name=server.name, ip=int_to_ipv4(server.ip or 0), where=where, n=round_.tries)
        self.counters["client.server_timeout"] += 1
        if round_.purpose is Purpose.REFRESH:
            # RFC 4380 §5.2.5: connectivity is gone. Re-resolve this server: a new address
            # gets a try, the same one (or a literal) means going on to the next server.
            # With somewhere to go, the address stays until the next server answers.
            failed = server.ip
            if self._can_fail_over:
                self._failing_over = True
                self.counters["client.failover"] += 1
            else:
                self._lose()
            self.chain.new_pass()
            self._begin(Purpose.QUALIFY, round_.index, now, avoid=failed)
        else:
            self._round_failed(Purpose.QUALIFY, round_.index, now)

    def _round_failed(self, purpose: Purpose, index: int, now: float) -> None:
        """A server did not qualify us (timeout, no address): go on along the chain."""
        if purpose is Purpose.RETURN:
            self._return.wait(now + self.config.refresh_interval)
            return
        following = self.chain.next_after(index)
        if not self._failing_over or following is None:
            self._lose()
        if following is not None:
            self._begin(Purpose.QUALIFY, following, now)
            return
        self.counters["client.offline"] += 1
        pause = self.chain.pause()
        self._log("warn", "No Teredo server answered; offline, next try in {t:.0f} s", t=pause)
        self._main.wait(now + pause)

    def _lose(self) -> None:
        """Drop the current qualification (if any) and the return probe, and tell the service."""
        self._failing_over = False
        self._return.idle()
        if self.qualification is not None:
            self.qualification = None
            self._log("info", "Teredo connectivity lost")
            self._changed(None)


def _ipv6(address: bytes) -> str:
    return str(IPv6Address(address))
