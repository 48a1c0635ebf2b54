"""The relay's forwarding rules (RFC 4380 §5.4), sans I/O.

`RelayMachine` is fed Teredo datagrams from the UDP socket (`from_udp`) and IPv6 packets
from the TUN device (`from_tun`), each with the current time; it answers through two
injected callables, `send(payload, (ip, port))` and `write(packet)`, and returns the time
it wants `on_timer` called (or None). No socket, clock or thread of its own.

Both directions have a fast path for the common case (a trusted peer, a plain IPv6
packet): a few byte comparisons and one dict lookup before the packet is handed on.
Everything else takes the slow path, which parses fully and counts each drop by reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from ipaddress import IPv6Network
from typing import Any

from teredo_appliance.config_model import GLOBAL_UNICAST
from teredo_appliance.peers import ADDRESSES_PER_MAPPING, Mapping, Peer, PeerTable
from teredo_appliance.ratelimit import IcmpErrorBudget, PerSecond
from teredo_appliance.stats import Counters
from teredo_appliance.wire.address import int_to_ipv4, is_global_ipv4, teredo_mapping, teredo_server
from teredo_appliance.wire.constants import LINK_LOCAL, TEREDO_PORT
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.ipv6 import (
    HEADER_LENGTH,
    UNREACHABLE_ADDRESS,
    UNREACHABLE_NO_ROUTE,
    IPv6Header,
    build_packet_too_big,
    build_unreachable,
    is_link_local,
    is_multicast,
    parse_header,
)
from teredo_appliance.wire.prefixes import PrefixFilter
from teredo_appliance.wire.scope import NOT_GLOBAL_UNICAST
from teredo_appliance.wire.teredo import build_bubble, is_bubble, parse_datagram

# RFC 4380 §5.4: the relay's link-local on the TUN. Also the source of our bubbles: the
# client answers an indirect bubble by bubbling back to the origin indication, whatever
# its source (Miredo's relay uses a link-local as well), and this one is ours.
RELAY_LINK_LOCAL = LINK_LOCAL
# Relay-wide cap on bubbles (datagrams, not rounds): RFC 4380 §5.2.6 paces each peer, but
# packets towards many silent peers would still make the relay spray the Internet (and
# the peers' servers) with bubbles. 1000/s is 500 discoveries a second, ~60 kB/s.
BUBBLES_PER_SECOND = 1000
# RFC 4380 §5.4.2: a relay forwards Teredo packets to the native IPv6 it serves. Whatever
# the served prefixes say, these are never native IPv6 destinations reached through us.
NEVER_SERVED = (
    *NOT_GLOBAL_UNICAST,
    IPv6Network("2001::/32"),  # Teredo (RFC 4380 §2.6): a Teredo peer is reached as Teredo, not natively
    IPv6Network("2002::/16"),  # 6to4 (RFC 3056): relaying into it can loop between relays (RFC 6324)
)

Send = Callable[[bytes, Mapping], object]
SendAll = Callable[[list[bytes], Mapping], object]
Write = Callable[[bytes], object]
ErrorSource = Callable[[bytes], bytes]


def link_local_source(destination: bytes) -> bytes:
    """The ICMPv6 error source when nothing better is known: the TUN's own address."""
    return RELAY_LINK_LOCAL


class RelayMachine:
    """Forwarding between native IPv6 (the TUN) and Teredo peers (UDP), with a peer table.

    `prefix` is the Teredo /32, `mtu` the largest packet sent to a peer. `cone`: the relay
    is reachable from anywhere (no NAT or a cone NAT), so the direct bubble that opens our
    own NAT binding (RFC 4380 §5.4.1) is not needed. `error_source(destination)` picks the
    source of an ICMPv6 error sent to `destination` (see RelayService for the choice).
    `reachable_ipv4` says which mapped and server IPv4 addresses a peer may have (RFC 4380
    §5.4.1: never send to one that is not global); only tests on private addresses widen
    it. It is asked once per new peer, never for a trusted peer's packets.
    `bubbles_per_second` caps the bubbles of all discoveries together; a round over the
    cap is not sent (counted) and the packets wait for the next one. Teredo packets go to
    native IPv6 only towards `served_prefixes`, never towards `NEVER_SERVED`.
    `send_all(packets, mapping)` sends a super-packet's segments to one peer (default: one
    `send` each).
    """

    def __init__(
        self,
        prefix: IPv6Network,
        mtu: int,
        max_peers: int,
        send: Send,
        write: Write,
        counters: Counters,
        *,
        cone: bool = False,
        error_source: ErrorSource = link_local_source,
        reachable_ipv4: Callable[[int], bool] = is_global_ipv4,
        bubbles_per_second: int = BUBBLES_PER_SECOND,
        served_prefixes: Iterable[IPv6Network] = (GLOBAL_UNICAST,),
        send_all: SendAll | None = None,
    ) -> None:
        if prefix.prefixlen != 32:
            raise ValueError(f"a Teredo prefix is a /32, not {prefix}")
        self.prefix32 = prefix.network_address.packed[:4]
        self.mtu = mtu
        self.cone = cone
        self.peers = PeerTable(max_peers, addresses_per_mapping=ADDRESSES_PER_MAPPING)
        self.counters = counters
        self._send = send
        self._send_all = send_all or self._send_each
        self._write = write
        self._error_source = error_source
        self._reachable_ipv4 = reachable_ipv4
        self._icmp = IcmpErrorBudget(self.counters)
        self._bubble_rate = PerSecond(bubbles_per_second)
        self._round_cost = 1 if cone else 2  # bubbles per round (see _bubble)
        self._serves = PrefixFilter(served_prefixes, NEVER_SERVED).allows

    # -- Teredo -> IPv6 (RFC 4380 §5.4.2) ----------------------------------------------

    def from_udp(self, data: bytes, source: Mapping, now: float) -> float | None:
        """A datagram from `source`; returns a new wake-up time for `on_timer`, or None."""
        return self.from_udp_batch(((data, source),), now)

    def from_udp_batch(self, batch: Iterable[tuple[bytes, Mapping]], now: float) -> float | None:
        """Datagrams that arrived together at `now`, in order; the earliest new wake-up, or None.

        Fast path: a bare IPv6 packet with a payload, no trailer, from a trusted peer at its
        mapping, to a served destination outside our Teredo prefix. That verdict rests on
        the addresses and the mapping only, so the datagrams right after one that took it,
        with the same addresses from the same mapping (a TCP flow's run), share it: each
        is still checked to be such a packet, the lookups are not repeated. Anything taking
        the slow path ends the run (it may change the peer table).
        """
        wake = None
        forwarded = 0
        run: tuple[bytes, Mapping] | None = None  # the addresses and mapping of the run
        write, peers, prefix32, serves = self._write, self.peers, self.prefix32, self._serves
        for data, source in batch:
            size = len(data)
            if size > HEADER_LENGTH and data[0] >> 4 == 6 and (data[4] << 8 | data[5]) + HEADER_LENGTH == size:
                addresses = data[8:40]
                if run is not None and addresses == run[0] and source == run[1]:
                    forwarded += 1
                    write(data)
                    continue
                if data[24:28] != prefix32 and serves(data[24:40]):
                    peer = peers.get(data[8:24])
                    if peer is not None and peer.trusted and peer.mapping == source:
                        peers.touch_rx(peer, now)
                        forwarded += 1
                        run = (addresses, source)
                        write(data)
                        continue
            run = None
            woken = self._from_udp_slow(data, source, now)
            if woken is not None and (wake is None or woken < wake):
                wake = woken
        if forwarded:
            self.counters["to_ipv6"] += forwarded
        return wake

    def _from_udp_slow(self, data: bytes, source: Mapping, now: float) -> float | None:
        counters = self.counters
        try:
            datagram = parse_datagram(data)
        except ParseError as error:
            counters.drop("udp." + error.reason)
            return None
        packet, header = datagram.packet, datagram.header
        src = header.source
        if src[:4] != self.prefix32:
            counters.drop("udp.source-not-teredo")
            return None
        wake = None
        peer = self.peers.get(src)
        if peer is not None and peer.trusted and peer.mapping == source:
            self.peers.touch_rx(peer, now)
        else:
            # RFC 4380 §5.4.2: trusted only if the source address embeds where it came from.
            mapped_ip, mapped_port = teredo_mapping(src)
            if mapped_port != source[1] or int_to_ipv4(mapped_ip) != source[0]:
                counters.drop("udp.source-mismatch")
                return None
            if not self._reachable(src):
                counters.drop("udp.non-global-source")  # trusting it would send there
                return None
            counters["peers.trusted"] += 1
            for queued in self.peers.trust(src, source, now):  # in arrival order
                counters["to_teredo"] += 1
                self._send(queued, source)
            wake = self.peers.next_deadline()
        if is_bubble(header):
            counters["bubbles.received"] += 1
            return wake
        dst = header.destination
        if is_multicast(dst):
            counters.drop("udp.multicast-destination")
        elif is_link_local(dst):
            counters.drop("udp.link-local-destination")
        elif dst[:4] == self.prefix32:
            counters.drop("udp.teredo-destination")  # no Teredo-to-Teredo through a relay
        elif not self._serves(dst):
            counters.drop("udp.unserved-destination")  # RFC 4380 §5.4.2, RFC 6324
        else:
            counters["to_ipv6"] += 1
            self._write(packet)
        return wake

    # -- IPv6 -> Teredo (RFC 4380 §5.4.1) ----------------------------------------------

    def from_tun(self, packet: bytes, now: float) -> float | None:
        """A packet the kernel routed to us; returns a new wake-up time, or None."""
        peer = self.peers.get(packet[24:40])
        if peer is not None and peer.trusted and len(packet) <= self.mtu:
            self.counters["to_teredo"] += 1
            self._send(packet, peer.mapping)
            return None
        return self._from_tun_slow(packet, now)

    def from_tun_segments(self, segments: list[bytes], now: float) -> float | None:
        """The segments of one TCP super-packet read whole from the TUN: the same addresses
        and next header, none longer than the first. The fast path's verdict (a trusted peer,
        within the MTU) is then the same for each, so it is taken once for all; otherwise
        each segment is judged as a packet of its own."""
        first = segments[0]
        peer = self.peers.get(first[24:40])
        if peer is not None and peer.trusted and len(first) <= self.mtu:
            self.counters["to_teredo"] += len(segments)
            self._send_all(segments, peer.mapping)
            return None
        wakes = [wake for wake in (self.from_tun(segment, now) for segment in segments) if wake is not None]
        return min(wakes, default=None)

    def _send_each(self, packets: list[bytes], mapping: Mapping) -> None:
        for packet in packets:
            self._send(packet, mapping)

    def _from_tun_slow(self, packet: bytes, now: float) -> float | None:
        counters = self.counters
        try:
            header = parse_header(packet)
        except ParseError as error:
            counters.drop("tun." + error.reason)
            return None
        if len(packet) > self.mtu:
            counters.drop("tun.too-big")
            self._icmp_error(packet, header, now, build_packet_too_big, self.mtu)
            return None
        dst = header.destination
        if is_multicast(dst):
            counters.drop("tun.multicast")  # the kernel's own MLD and ND through the TUN
            return None
        if dst[:4] != self.prefix32:
            counters.drop("tun.not-teredo")  # the route to the TUN is wider than the prefix
            self._icmp_error(packet, header, now, build_unreachable, UNREACHABLE_NO_ROUTE)
            return None
        peers = self.peers
        peer = peers.get(dst)  # not trusted: the fast path took those
        if peer is None:
            if not self._reachable(dst):
                counters.drop("tun.not-global")  # RFC 4380 §5.4.1: MUST be silently discarded
                return None
            mapped_ip, mapped_port = teredo_mapping(dst)
            peer = peers.get_or_create(dst, (int_to_ipv4(mapped_ip), mapped_port), now)
        wake = None
        if not peer.attempts:  # no discovery round running: start one
            if not peers.try_bubble(peer, now):
                # Its bubble budget is spent (RFC 4380 §5.2.6): refuse at once.
                counters.drop("tun.peer-unreachable")
                self._icmp_error(packet, header, now, build_unreachable, UNREACHABLE_ADDRESS)
                return None
            self._bubble(peer, now)
            wake = peers.next_deadline()
        if peers.enqueue(peer, packet):
            counters["queued"] += 1
        else:
            counters.drop("tun.queue-full")
        return wake

    def _reachable(self, address: bytes) -> bool:
        """Whether the mapping and server a Teredo address embeds may be sent to (§5.4.1)."""
        reachable = self._reachable_ipv4
        return reachable(teredo_mapping(address)[0]) and reachable(teredo_server(address))

    def _bubble(self, peer: Peer, now: float) -> None:
        """RFC 4380 §5.4.1 case 3: an indirect bubble via the peer's server, and a direct one.

        Over the relay-wide cap the round is lost as if on the wire: the peer's pacing
        already counted it, its retry is scheduled, and its packets stay queued.
        """
        cost = self._round_cost
        if not self._bubble_rate.allow(now, cost):
            self.counters["bubbles.rate-limited"] += cost
            return
        bubble = build_bubble(RELAY_LINK_LOCAL, peer.addr)
        self._send(bubble, (int_to_ipv4(teredo_server(peer.addr)), TEREDO_PORT))
        if not self.cone:
            self._send(bubble, peer.mapping)
        self.counters["bubbles.sent"] += cost

    # -- timers --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self.peers.next_deadline()

    def on_timer(self, now: float) -> float | None:
        """Expire idle peers, repeat unanswered bubbles, give up after the last retry.

        Returns the next wake-up time, or None when there is nothing left to wait for.
        """
        self.peers.expire(now)
        for peer in self.peers.due_for_retry(now):
            if self.peers.retry_wanted(peer) and self.peers.try_bubble(peer, now):
                self._bubble(peer, now)
                continue
            # RFC 4380 §5.4.1: no answer after the retries. Every queued packet is dropped, but
            # one error (for the newest) tells the sender: one per packet would let a burst
            # towards a silent peer turn into a burst of errors.
            queued = self.peers.give_up(peer)
            if queued:
                self.counters["drop.tun.peer-unreachable"] += len(queued)
                newest = queued[-1]
                self._icmp_error(newest, parse_header(newest), now, build_unreachable, UNREACHABLE_ADDRESS)
        return self.peers.next_deadline()

    # -- ICMPv6 errors (RFC 4443) --------------------------------------------------------

    def _icmp_error(
        self,
        invoking: bytes,
        header: IPv6Header,
        now: float,
        build: Callable[[bytes, bytes, bytes, int], bytes],
        parameter: int,
    ) -> None:
        """Report a dropped packet to its sender, within the ICMPv6 error budget."""
        if not self._icmp.allow(invoking, header, now):
            return
        sender = header.source
        self._write(build(self._error_source(sender), invoking, sender, parameter))

    # -- reporting -----------------------------------------------------------------------

    def snapshot(self, now: float, limit: int | None = None) -> list[dict[str, Any]]:
        return self.peers.snapshot(now, limit)
