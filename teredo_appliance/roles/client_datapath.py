"""The client's data path (RFC 4380 §5.2.3-§5.2.9): who may send us packets, and how we reach peers.

Sans-I/O: fed TUN packets and Teredo datagrams with `now`; acts through `send(payload,
(host, port))` and `write_tun(packet)`. The list of peers is the shared `PeerTable`
(bounds, pacing, retries); this module decides what goes in it.

Out (TUN -> UDP):
- a trusted peer: straight to its mapping (the hot path: one dict lookup);
- another Teredo client: queue, bubble directly and through its server (RFC 4380 §5.2.4
  case 5; we always send the direct bubble too, as §5.2.4 allows), until its bubble or
  traffic arrives from the mapping in its address;
- native IPv6: queue, send an ICMPv6 echo with an unguessable payload through our server
  (§5.2.9); the relay nearest the peer returns the reply, and its mapping becomes trusted.
  An ICMPv6 error quoting our echo identifies that relay as well. A trusted native peer
  we keep sending to but have not heard from for `RELAY_SILENCE` gets the echo test again
  (paced as bubbles, and `RELAY_RECHECKS_PER_SECOND` in all): a flow only we send on
  would otherwise follow a dead or drained relay until the entry expires, 30 s later.
Unanswered after the retries: the queue is answered with ICMPv6 address unreachable.

In (UDP -> TUN), only packets for our Teredo address, and only:
- from a trusted peer at its mapping (the hot path);
- from a Teredo address that embeds the outer IPv4 address and port (§5.2.3 case 3);
- from our server: indirect bubbles, answered with a direct bubble to the origin, which
  opens our NAT for the peer (a relay or a Teredo client) that wants to reach us, and the
  reply to our echo test when the server is the relay (RFC 4380 §5.4.3);
- a native source arriving through a relay we do not trust yet is held (bounded, as the
  outgoing queue) while the echo test runs towards it (§5.2.3 case 6), and delivered only
  if the echo reply comes back through that same relay. The same holds for a native peer
  we trust at one relay whose packets now arrive through another (an anycast relay died
  or was drained): the relay is re-checked, as Miredo does, so a relay change costs one
  round trip; the trusted relay keeps carrying our packets until the reply names the new
  one.
- a Teredo client behind our own NAT at a local address `client_local` vouches for
  (RFC 4380 §5.2.3 case 5, RFC 6081 §5.6 hairpinning);
- a Teredo client behind a symmetric NAT, at the mapping its NAT chose for us, when its
  direct bubble carries the nonce its indirect one did (RFC 6081 §5.2, `client_symmetric`).
Everything else is dropped and counted.

Server Load Reduction (RFC 6081 §5.7, `client_load_reduction`): our discovery bubbles
solicit, a soliciting bubble straight from a peer's own mapping (or relayed by our server)
is answered with an advertising one, and a peer that advertised is rediscovered with the
direct bubble alone first; the indirect pair follows only if that goes unanswered.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from teredo_appliance.peers import Mapping, Peer, PeerTable
from teredo_appliance.ratelimit import IcmpErrorBudget, PerSecond
from teredo_appliance.roles.client_load_reduction import (
    ADVERTISEMENT,
    SOLICITATION,
    ServerLoadReduction,
    solicits,
)
from teredo_appliance.roles.client_local import LocalPeers
from teredo_appliance.roles.client_symmetric import SymmetricNat
from teredo_appliance.stats import Counters
from teredo_appliance.wire.address import int_to_ipv4, ipv4_to_int, is_global_ipv4, teredo_mapping, teredo_server
from teredo_appliance.wire.constants import LINK_LOCAL, TEREDO_PORT
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.ipv6 import (
    HEADER_LENGTH,
    ICMPV6_ECHO_REQUEST,
    NEXT_HEADER_ICMPV6,
    NEXT_HEADER_NONE,
    UNREACHABLE_ADDRESS,
    build_echo,
    build_unreachable,
    parse_echo,
    parse_header,
    quoted_packet,
)
from teredo_appliance.wire.teredo import build_bubble, parse_datagram
from teredo_appliance.wire.trailers import Trailer, parse_trailers

MAX_PEERS = 4096  # a client talks to few peers; this bounds what a flood can make us hold
ECHO_NONCE_LENGTH = 8  # RFC 4380 §5.2.9: "at least 64 bits"
TOUCH_GRANULARITY = 1.0  # refresh a busy peer's reception time at most once a second
# A trusted native peer silent this long while we send to it has its relay re-checked by
# the echo test (§5.2.9). Twice the touch granularity, so a peer that answers even once a
# second is never probed; the RFC's bubble pacing (§5.2.6) spaces the probes 2 s apart.
RELAY_SILENCE = 2 * TOUCH_GRANULARITY
RELAY_RECHECKS_PER_SECOND = 20  # all peers together: what a busy client adds to its server's load
# Advertising bubbles (RFC 6081 §5.7) answer bubbles whose source mapping anyone can forge:
# besides the per-mapping pacing, at most this many a second in all, so a flood of forged
# solicitations reflects no more than a trickle of 60-byte bubbles.
ADVERTISEMENTS_PER_SECOND = 10


class ClientPeers:
    """Packets between our TUN and Teredo peers, for one qualification at a time."""

    def __init__(
        self,
        send: Callable[[bytes, Mapping], Any],
        write_tun: Callable[[bytes], None],
        counters: Counters,
        *,
        max_peers: int = MAX_PEERS,
        rng: random.Random | None = None,
        heard_server: Callable[[float], None] = lambda now: None,
        local: LocalPeers | None = None,
        symmetric_nat: bool = True,
        server_load_reduction: bool = True,
        send_all: Callable[[list[bytes], Mapping], Any] | None = None,
    ) -> None:
        """`send_all(packets, mapping)` sends a super-packet's segments to one peer (default:
        one `send` each)."""
        self._send = send
        self._send_all = send_all or self._send_each
        self.local = local  # peers behind our own NAT (local discovery, hairpinning); None: off
        self._heard_server = heard_server  # a well-formed packet from our server arrived at `now`
        self._write_tun = write_tun
        self.counters = counters
        self._max_peers = max_peers
        self._rng = rng or random.SystemRandom()
        self.symmetric = SymmetricNat(self._rng) if symmetric_nat else None  # RFC 6081 §5.2; None: off
        self.load = ServerLoadReduction() if server_load_reduction else None  # RFC 6081 §5.7; None: off
        self._advertisements = PerSecond(ADVERTISEMENTS_PER_SECOND)
        self.table = PeerTable(max_peers)
        self.address: bytes | None = None  # our Teredo address; None while not qualified
        self._prefix = b""
        self._server: Mapping = ("", 0)
        self._icmp = IcmpErrorBudget(self.counters)
        self._rechecks = PerSecond(RELAY_RECHECKS_PER_SECOND)
        # Hot-path tallies as plain ints (cheaper than Counter updates); see stats().
        self.tx_packets = self.rx_packets = 0

    def attach(self, address: bytes | None, server_ip: int = 0, *, behind_symmetric: bool = False) -> None:
        """Use a new Teredo address (None: offline). Trust was bound to the old one: start afresh.
        `behind_symmetric`: our NAT is symmetric, so our bubbles carry nonces (RFC 6081 §5.2)."""
        if self.symmetric is not None and self.symmetric.sending != behind_symmetric:
            self.symmetric.reset(behind_symmetric)
        if address == self.address and (address is None or self._server[0] == int_to_ipv4(server_ip)):
            return
        if self.symmetric is not None:
            self.symmetric.reset(behind_symmetric)
        if self.load is not None:
            self.load.reset()
        self.address = address
        self._prefix = b"" if address is None else address[:4]
        self._server = ("", 0) if address is None else (int_to_ipv4(server_ip), TEREDO_PORT)
        self.table = PeerTable(self._max_peers)

    # -- out -------------------------------------------------------------------------------

    def from_tun(self, packet: bytes, now: float) -> bool:
        """An IPv6 packet the kernel routed to our TUN; True if the timers may have moved."""
        peer = self.table.get(packet[24:40])
        if peer is not None and peer.trusted:
            self.tx_packets += 1
            self._send(packet, peer.mapping)  # type: ignore[arg-type]  # trusted => mapped
            return now - peer.last_rx >= RELAY_SILENCE and self._recheck_silent_relay(peer, now)
        address = self.address
        if address is None:
            self.counters.drop("tun.offline")
            return False
        if packet[8:24] != address:
            self.counters.drop("tun.source")  # the kernel's link-local chatter, or a stale address
            return False
        destination = packet[24:40]
        if destination[0] == 0xFF or destination[0] == 0xFE or destination == bytes(16):
            self.counters.drop("tun.destination")  # multicast, link-local, unspecified
            return False
        if destination[:4] == self._prefix:
            ip, port = teredo_mapping(destination)
            if not (is_global_ipv4(ip) and is_global_ipv4(teredo_server(destination))):
                self.counters.drop("tun.non-global-peer")  # RFC 4380 §5.2.4: MUST discard
                return False
            peer = self.table.get_or_create(destination, (int_to_ipv4(ip), port), now)
        else:
            peer = self.table.get_or_create(destination, None, now)
        if not self.table.enqueue(peer, packet):
            self.counters.drop("queue-full")
        if self.table.try_bubble(peer, now):
            self._discover(peer, now)
        elif peer.attempts == 0:
            self._unreachable(self.table.give_up(peer), now)  # budget spent: refuse at once
        return True

    def from_tun_segments(self, segments: list[bytes], now: float) -> bool:
        """The segments of one TCP super-packet read whole from the TUN (same addresses and
        next header): a trusted peer's verdict holds for all, so it is taken once; otherwise
        each segment is judged as a packet of its own. True if the timers may have moved."""
        peer = self.table.get(segments[0][24:40])
        if peer is not None and peer.trusted:
            self.tx_packets += len(segments)
            self._send_all(segments, peer.mapping)  # type: ignore[arg-type]  # trusted => mapped
            return now - peer.last_rx >= RELAY_SILENCE and self._recheck_silent_relay(peer, now)
        return any([self.from_tun(segment, now) for segment in segments])

    def _send_each(self, packets: list[bytes], mapping: Mapping) -> None:
        for packet in packets:
            self._send(packet, mapping)

    def _recheck_silent_relay(self, peer: Peer, now: float) -> bool:
        """Run the echo test again for a native peer whose relay has been silent; True if it went.

        The reply names the relay nearest the peer now: the same one (renewing the entry)
        or another (which takes over, as in `_relay_answer`). Until then our packets keep
        the trusted relay, and the peer's packets through it are still delivered: marking
        that relay as the candidate only keeps our probe's reply off the fast path.
        """
        if peer.addr[:4] == self._prefix or peer.candidate is not None or self.address is None:
            return False  # a Teredo peer has no relay; a re-check is already running
        if not (peer.ready(now) and self._rechecks.allow(now) and self.table.try_bubble(peer, now)):
            return False  # paced per peer first, so a busy stream spends none of the shared budget
        self.counters["client.relay_silent_recheck"] += 1
        peer.candidate = peer.mapping
        self._discover(peer, now)
        return True

    def _discover(self, peer: Peer, now: float) -> None:
        """One round of discovery: bubbles for a Teredo peer (at its local addresses too, if
        it is behind our NAT), the echo test for a native one."""
        address = self.address
        assert address is not None
        destination = peer.addr
        if destination[:4] == self._prefix:
            bubble = build_bubble(address, destination) + self._nonce_trailer(destination, now)
            if self.local is not None:
                bubble += self.local.trailer  # RFC 6081 §4.3: in direct and indirect bubbles only
            assert peer.mapping is not None
            if self.load is not None:
                bubble += SOLICITATION
            self._send(bubble, peer.mapping)
            if self._direct_only(destination, peer.mapping, now):
                self.counters["client.bubble"] += 1
                self.counters["client.bubble_direct_only"] += 1
            else:
                self.counters["client.bubble"] += 2
                self._send(bubble, (int_to_ipv4(teredo_server(destination)), TEREDO_PORT))
            if self.local is not None:
                self.local.probe(destination, bubble, (), now)
            return
        if peer.nonce is None:
            peer.nonce = self._rng.getrandbits(8 * ECHO_NONCE_LENGTH).to_bytes(ECHO_NONCE_LENGTH, "big")
        identifier, sequence = self._rng.getrandbits(16), self._rng.getrandbits(16)
        self.counters["client.echo_test"] += 1
        self._send(build_echo(address, destination, identifier, sequence, peer.nonce), self._server)

    def _direct_only(self, destination: bytes, mapping: Mapping, now: float) -> bool:
        """RFC 6081 §5.7: whether this round may leave the indirect bubble out. Never behind a
        symmetric NAT: there the indirect copy's nonce is what lets the peer follow us."""
        if self.load is None or (self.symmetric is not None and self.symmetric.sending):
            return False
        return self.load.direct_only(destination, mapping, now)

    # -- in --------------------------------------------------------------------------------

    def from_udp(self, data: bytes, host: str, port: int, now: float) -> bool:
        """A Teredo datagram without an authentication indicator (those are RAs); True if
        the timers may have moved."""
        if data and data[0] >> 4 == 6 and len(data) >= HEADER_LENGTH:
            end = HEADER_LENGTH + ((data[4] << 8) | data[5])
            if end > len(data):
                self.counters.drop("ipv6-truncated")
                return False
            packet = data if end == len(data) else data[:end]
            peer = self.table.get(packet[8:24])
            if (peer is not None and peer.trusted and peer.mapping == (host, port) and peer.candidate is None
                    and packet[24:40] == self.address):
                if now - peer.last_rx >= TOUCH_GRANULARITY:
                    self.table.touch_rx(peer, now)
                if end == HEADER_LENGTH and packet[6] == NEXT_HEADER_NONE:
                    if end < len(data) and self.load is not None:
                        options = self._trailer_options(data[end:])
                        if options is None:
                            return False
                        self._load_reduction_in(peer.addr, (host, port), options, now)
                    self.counters["client.bubble_in"] += 1
                else:
                    self.rx_packets += 1
                    self._write_tun(packet)
                return False
            origin, trailer = None, data[end:]
        else:
            try:
                datagram = parse_datagram(data)
            except ParseError as error:
                self.counters.drop(error.reason)
                return False
            packet, origin, trailer = datagram.packet, datagram.origin, datagram.trailer
        self._slow_in(packet, origin, host, port, now, trailer)
        return True

    def _slow_in(self, packet: bytes, origin: Any, host: str, port: int, now: float, trailer: bytes = b"") -> None:
        address = self.address
        if address is None:
            self.counters.drop("offline")
            return
        try:
            header = parse_header(packet)
        except ParseError as error:
            self.counters.drop(error.reason)
            return
        if header.destination != address:
            self.counters.drop("not-for-us")
            return
        source = header.source
        bubble = header.payload_length == 0 and header.next_header == NEXT_HEADER_NONE
        if (host, port) == self._server:
            # Our server relays bubbles to us; it may also be a relay (RFC 4380 §5.4.3) and so
            # answer our echo test itself. Only such a packet shows the mapping is alive.
            if bubble and origin is not None:
                if self._answer_indirect_bubble(source, origin.ip, origin.port, now, trailer):
                    self._heard_server(now)
            elif not bubble and self._relay_answer(packet, header, host, port, now):
                self._heard_server(now)
            else:
                self.counters.drop("from-server")
            return
        if source[:4] == self._prefix:
            # RFC 4380 §5.2.3 case 3: a Teredo source vouches for itself by its mapping.
            ip = ipv4_to_int(host)
            if teredo_mapping(source) != (ip, port):
                if bubble and self._follow_symmetric_peer(source, host, port, now, trailer):
                    return
                if not self._from_local_peer(packet, source, bubble, host, port, now, trailer):
                    self.counters.drop("teredo-mapping-mismatch")
                return
            if not (is_global_ipv4(ip) and is_global_ipv4(teredo_server(source))):
                self.counters.drop("non-global-peer")  # trusting it would send there (§5.2.4)
                return
            options = self._trailer_options(trailer) if bubble and trailer and self.load is not None else []
            if options is None:
                return
            self._trust(source, (host, port), now)
            self._deliver(packet, bubble)
            if options:
                self._load_reduction_in(source, (host, port), options, now)
            return
        if self._relay_answer(packet, header, host, port, now):
            return
        peer = self.table.get(source)
        if peer is not None and peer.trusted and peer.mapping == (host, port):
            # Its trusted relay, while another is re-checked (the hot path leaves these here).
            self.table.touch_rx(peer, now)
            self._deliver(packet, bubble)
            return
        if bubble or source[0] in (0xFF, 0xFE) or source == bytes(16):
            self.counters.drop("untrusted-source")
            return
        peer = self.table.get_or_create(source, (host, port), now)
        # §5.2.3 case 6: a native host through a relay we do not know (or not for this host).
        # Hold the packet and run the echo test towards that host; deliver only if the reply
        # comes this way. A trusted peer keeps its relay meanwhile: a forged packet through
        # another mapping costs a paced echo test, never the trust.
        if peer.trusted:
            peer.candidate = (host, port)
            self.counters["client.relay_recheck"] += 1
        else:
            peer.mapping = (host, port)
        if not self.table.enqueue(peer, packet):
            self.counters.drop("queue-full")
        if self.table.try_bubble(peer, now):
            self._discover(peer, now)

    def _follow_symmetric_peer(self, source: bytes, host: str, port: int, now: float, trailer: bytes) -> bool:
        """RFC 6081 §5.2: a direct bubble from a peer behind a symmetric NAT, at the mapping
        its NAT chose towards us, with the nonce its bubble through our server carried:
        reach it there, and answer so that its NAT lets our packets in. False: not vouched."""
        symmetric = self.symmetric
        if symmetric is None or not symmetric.vouches(source, trailer, now):
            return False
        if not (is_global_ipv4(ipv4_to_int(host)) and is_global_ipv4(teredo_server(source))):
            self.counters.drop("non-global-peer")
            return True
        peer = self.table.get(source)
        known = peer is not None and peer.trusted and peer.mapping == (host, port)
        self._trust(source, (host, port), now)
        self.counters["client.bubble_in"] += 1
        if not known:
            self.counters["client.symmetric_peer_followed"] += 1
            if self.table.try_reply_bubble((host, port), now):
                assert self.address is not None
                self._send(build_bubble(self.address, source) + self._nonce_trailer(source, now), (host, port))
        return True

    def _load_reduction_in(self, source: bytes, mapping: Mapping, options: list[Trailer], now: float) -> None:
        """RFC 6081 §5.7 for a bubble straight from `source` at the mapping its address embeds,
        once trusted: remember an advertiser, answer a solicitation with an advertising bubble
        (paced per mapping as replies to indirect bubbles, and `ADVERTISEMENTS_PER_SECOND` in
        all; after the trust, which renews the per-mapping pacing, not before it)."""
        assert self.load is not None
        if source[:4] != self._prefix:
            return  # a native host's packets come through a relay: nothing to advertise to
        if self.load.heard(source, mapping, options, now):
            if self.table.try_reply_bubble(mapping, now) and self._advertisements.allow(now):
                assert self.address is not None
                self.counters["client.bubble_advertised"] += 1
                self._send(build_bubble(self.address, source) + ADVERTISEMENT, mapping)
            else:
                self.counters.drop("advertisement-paced")

    def _trailer_options(self, trailer: bytes) -> list[Trailer] | None:
        """The trailers after a bubble; None, counted as a drop, when they are malformed."""
        try:
            return parse_trailers(trailer)
        except ParseError as error:
            self.counters.drop(error.reason)
            return None

    def _nonce_trailer(self, peer: bytes, now: float) -> bytes:
        return b"" if self.symmetric is None else self.symmetric.trailer_for(peer, now)

    def _from_local_peer(
        self, packet: bytes, source: bytes, bubble: bool, host: str, port: int, now: float, trailer: bytes
    ) -> bool:
        """RFC 4380 §5.2.3 case 5 and RFC 6081 §5.6 hairpinning: a Teredo client behind our NAT,
        at a local address it is known (or, while we look for it, offers itself) to use.
        False: not such a peer (the caller counts the drop)."""
        local = self.local
        if local is None:
            return False
        offered = local.alternates(trailer, source)
        if offered is None:
            return True  # malformed trailer: counted
        peer = self.table.get(source)
        mapping = (host, port)
        if not local.vouches(source, mapping, offered, peer is not None and not peer.trusted, now):
            return False
        known = peer is not None and peer.trusted and peer.mapping == mapping
        self._trust(source, mapping, now)
        if not bubble:
            self.rx_packets += 1
            self._write_tun(packet)
        elif not known and self.table.try_reply_bubble(mapping, now):
            # Newly trusted by its bubble: answer, so that it trusts us at our local address too.
            self.counters["client.local_bubble"] += 1
            assert self.address is not None
            self._send(build_bubble(self.address, source) + local.trailer, mapping)
        return True

    def _answer_indirect_bubble(self, source: bytes, ip: int, port: int, now: float, trailer: bytes = b"") -> bool:
        """A peer (relay or client) bubbled us through our server: open our NAT towards it.

        Anyone can make our server relay a bubble with an origin of their choosing, so
        replies are paced as our own bubbles are (RFC 4380 §5.2.6). True when the bubble
        was a valid one relayed by our server (so our mapping to it is alive), even if the
        reply itself is paced; False when its origin is not a global address.
        """
        if not is_global_ipv4(ip):
            self.counters.drop("origin-non-global")
            return False
        offered = () if self.local is None else self.local.alternates(trailer, source)
        if offered is None:
            return False  # malformed trailer: counted
        options = [] if self.load is None or not trailer else self._trailer_options(trailer)
        if options is None:
            return False
        if self.symmetric is not None:
            self.symmetric.heard_relayed(source, trailer, now)
        if not self.table.try_reply_bubble((int_to_ipv4(ip), port), now):
            self.counters.drop("bubble-reply-paced")
            return True
        assert self.address is not None
        self.counters["client.bubble_reply"] += 1
        bubble = build_bubble(self.address, source) + self._nonce_trailer(source, now)
        if self.local is not None:
            bubble += self.local.trailer
        if self.load is not None and solicits(options):
            self.counters["client.bubble_advertised"] += 1
            bubble += ADVERTISEMENT  # RFC 6081 §5.7: the peer learns it may skip our server next time
        self._send(bubble, (int_to_ipv4(ip), port))
        if self.symmetric is not None and self.symmetric.sending and source[:4] == self._prefix:
            # RFC 6081 §5.2 (§6.1, packets 4 and 6): our direct bubble leaves from a port the
            # peer has not heard of; the same nonce through its server lets it follow us there.
            self.counters["client.bubble"] += 1
            self._send(bubble, (int_to_ipv4(teredo_server(source)), TEREDO_PORT))
        if self.local is not None:
            self.local.probe(source, bubble, offered, now)  # a peer behind our NAT: over the LAN too
        return True

    def _deliver(self, packet: bytes, bubble: bool) -> None:
        """What a trusted peer sent: a bubble is only counted, anything else goes to the TUN."""
        if bubble:
            self.counters["client.bubble_in"] += 1
        else:
            self.rx_packets += 1
            self._write_tun(packet)

    def _relay_answer(self, packet: bytes, header: Any, host: str, port: int, now: float) -> bool:
        """Our echo test's reply, or an ICMPv6 error quoting our echo: trust that relay."""
        if header.next_header != NEXT_HEADER_ICMPV6:
            return False
        echo = parse_echo(packet, header)
        if echo is not None:
            peer = self.table.get(header.source)
            if not echo.reply or peer is None or peer.nonce is None or echo.data != peer.nonce:
                return False
            self.counters["client.relay_found"] += 1
            self._trust(header.source, (host, port), now)
            return True
        quoted = quoted_packet(packet, header)
        if quoted is None or len(quoted) < HEADER_LENGTH + 8 or quoted[8:24] != self.address:
            return False
        target = quoted[24:40]
        peer = self.table.get(target)
        if (
            peer is None or peer.nonce is None or quoted[6] != NEXT_HEADER_ICMPV6
            or quoted[HEADER_LENGTH] != ICMPV6_ECHO_REQUEST
            or quoted[HEADER_LENGTH + 8 : HEADER_LENGTH + 8 + ECHO_NONCE_LENGTH] != peer.nonce
        ):
            return False
        self.counters["client.relay_found_by_error"] += 1
        self._trust(target, (host, port), now)
        return True

    def _trust(self, addr: bytes, mapping: Mapping, now: float) -> None:
        """Trust `addr` at `mapping` and flush what waited for it, in order.

        Outgoing packets go to the mapping; held incoming ones reach the TUN only if they
        arrived through this very mapping.
        """
        peer = self.table.get(addr)
        held_from = None if peer is None else peer.candidate if peer.trusted else peer.mapping
        if self.load is not None and self.load.trusted(addr, now):
            self.counters["client.indirect_bubble_saved"] += 1
        address = self.address
        for packet in self.table.trust(addr, mapping, now):
            if packet[8:24] == address:
                self.tx_packets += 1
                self._send(packet, mapping)
            elif held_from == mapping:
                self.rx_packets += 1
                self._write_tun(packet)
            else:
                self.counters.drop("held-from-other-relay")

    # -- timers ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = (self.table.next_deadline(), None if self.local is None else self.local.next_deadline())
        return min((d for d in deadlines if d is not None), default=None)

    def on_timer(self, now: float) -> None:
        """Expire idle peers; repeat discovery for the unanswered, or give up on them."""
        if self.local is not None:
            self.local.on_timer(now)
        self.table.expire(now)
        for peer in self.table.due_for_retry(now):
            if self.table.retry_wanted(peer) and self.address is not None and self.table.try_bubble(peer, now):
                self._discover(peer, now)
            else:
                self.counters["client.peer_unreachable"] += 1
                peer.nonce = None
                self._unreachable(self.table.give_up(peer), now)

    def _unreachable(self, packets: list[bytes], now: float) -> None:
        """Drop what waited for an unreachable peer; tell the local stack once (RFC 4443 §3.1),
        for the newest of its packets, and at most 10 times a second in all."""
        address = self.address
        newest = None
        for packet in packets:
            if packet[8:24] != address:
                self.counters.drop("held-unconfirmed")  # held incoming from a relay never confirmed
                continue
            self.counters.drop("peer-unreachable")
            newest = packet
        if newest is None:
            return
        try:
            header = parse_header(newest)
        except ParseError:
            return
        if self._icmp.allow(newest, header, now):
            self._write_tun(build_unreachable(LINK_LOCAL, newest, header.source, UNREACHABLE_ADDRESS))

    def stats(self) -> dict[str, int]:
        symmetric = {} if self.symmetric is None else self.symmetric.stats()
        load = {} if self.load is None else self.load.stats()
        return {"tx_packets": self.tx_packets, "rx_packets": self.rx_packets, **self.table.stats(), **symmetric,
                **load}
