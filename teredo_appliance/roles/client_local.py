"""Teredo peers on our own side of the NAT: local discovery (RFC 4380 §5.2.8) and the
Hairpinning Extension (RFC 6081 §5.6, with the §4.3 trailer).

Two clients behind one NAT cannot reach each other through their mapped addresses unless
the NAT hairpins. They can over the LAN, if each learns the other's local address:
- local discovery: bubbles to the Teredo IPv4 Discovery Address 224.0.0.253:3544 (TTL 1),
  IPv6 source our Teredo address, destination ff02::1, sent when we qualify and then every
  200-300 s; accepted only from on-link sources behind our own NAT (same mapped IPv4), at
  most `DISCOVERY_ACCEPT_PER_SECOND`, and answered with a paced unicast bubble;
- hairpinning: our direct and indirect bubbles carry an Alternate Address trailer with our
  local address and port; a peer whose mapped IPv4 is ours (so behind the same NAT)
  announcing such a trailer gets bubbles at those addresses too.
A peer is trusted at a local address only when a packet arrives from it and that address
is vouched for: learned by discovery (RFC 4380 §5.2.3 case 5), or listed by the peer's own
trailer while we are looking for it. Miredo sends neither and ignores both, unharmed.

Sans-I/O: fed `now`, acts through `send(payload, (host, port))`; the on-link test is the
service's (`on_link(ipv4 as int)`). Memory is bounded: at most `max_peers` candidates.
"""

from __future__ import annotations

import ipaddress
import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from teredo_appliance.peers import Mapping, Pacing
from teredo_appliance.ratelimit import PerSecond
from teredo_appliance.stats import Counters
from teredo_appliance.wire.address import int_to_ipv4, ipv4_to_int, teredo_mapping
from teredo_appliance.wire.constants import ALL_NODES, DISCOVERY_ADDRESS, TEREDO_PORT
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.ipv6 import NEXT_HEADER_NONE, build_packet
from teredo_appliance.wire.teredo import build_bubble, is_bubble, parse_datagram
from teredo_appliance.wire.trailers import ALTERNATE_ADDRESS_MAX_ENTRIES, AlternateAddressTrailer, parse_trailers

DISCOVERY_PORT = TEREDO_PORT  # RFC 4380 §5.2.8: "the Teredo UDP port"
DISCOVERY_TTL = 1  # RFC 4380 §5.2.8: link only
DISCOVERY_HOP_LIMIT = 1  # RFC 4380 §5.2.8: IPv6 hop limit of a local discovery bubble
DISCOVERY_INTERVAL = (200.0, 300.0)  # RFC 4380 §5.2.8: uniformly distributed
LOCAL_PEER_LIFETIME = 600.0  # RFC 4380 §5.2.4 case 3: discovered "in the last 600 seconds"
# Our own limits (the RFC sets none): one multicast bubble a second at most, however many
# peers we look for, and 10 discovery bubbles a second accepted from the whole LAN.
DISCOVERY_SEND_INTERVAL = 1.0
DISCOVERY_ACCEPT_PER_SECOND = 10
MAX_LOCAL_PEERS = 64  # a LAN has few Teredo clients; bounds what a flood can make us hold
DISCOVERED, ALTERNATE = "discovery", "alternate-address"  # how a local address was learned

_UNUSABLE_IPV4 = ((0x00000000, 0xFF000000), (0x7F000000, 0xFF000000), (0xE0000000, 0xE0000000))


def usable_local_ipv4(ip: int) -> bool:
    """A unicast address a peer may be reached at: not 0/8, loopback, multicast or class E."""
    return all(ip & mask != net for net, mask in _UNUSABLE_IPV4)


class LocalPeer:
    """What we know of one Teredo client behind our NAT."""

    __slots__ = ("heard", "how", "mappings", "pacing", "trusted_at")

    def __init__(self, how: str, now: float) -> None:
        self.how = how
        self.heard = now
        self.mappings: list[Mapping] = []  # local addresses to try, newest last
        self.pacing = Pacing()  # RFC 4380 §5.2.6, for the unicast bubbles answering discovery
        self.trusted_at: Mapping | None = None


class LocalPeers:
    """Local discovery and hairpinning for one qualification at a time."""

    def __init__(
        self,
        send: Callable[[bytes, Mapping], Any],
        counters: Counters,
        *,
        discovery: bool = True,
        hairpinning: bool = True,
        on_link: Callable[[int], bool] = lambda ip: False,
        max_peers: int = MAX_LOCAL_PEERS,
        rng: random.Random | None = None,
    ) -> None:
        self._send = send
        self.counters = counters
        self.discovery = discovery
        self.hairpinning = hairpinning
        self.on_link = on_link
        self._max_peers = max_peers
        self._rng = rng or random.SystemRandom()
        self.peers: OrderedDict[bytes, LocalPeer] = OrderedDict()  # oldest heard first
        self.address: bytes | None = None
        self._mapped_ip = 0
        self.trailer = b""  # our Alternate Address trailer, appended to our direct and indirect bubbles
        self._next_discovery: float | None = None
        self._last_discovery = float("-inf")
        self._accept = PerSecond(DISCOVERY_ACCEPT_PER_SECOND)
        self.hairpinning_used = False

    def attach(self, address: bytes | None, local: Mapping | None, now: float) -> None:
        """A new qualification (None: offline): our Teredo address and our LAN ip:port."""
        if address != self.address:
            self.peers.clear()
        self.address = address
        self._mapped_ip = 0 if address is None else teredo_mapping(address)[0]
        own = None if local is None else (ipv4_to_int(local[0]), local[1])
        usable = own is not None and usable_local_ipv4(own[0]) and own[1] != 0
        self.trailer = AlternateAddressTrailer((own,)).pack() if self.hairpinning and usable and address else b""
        self._next_discovery = None
        if self.discovery and address is not None:
            self._multicast(now)  # announce ourselves at once, then every 200-300 s
            self._next_discovery = now + self._rng.uniform(*DISCOVERY_INTERVAL)

    # -- discovery out ---------------------------------------------------------------------

    def _multicast(self, now: float) -> None:
        """One local discovery bubble, unless one went out less than a second ago."""
        if self.address is None or now < self._last_discovery + DISCOVERY_SEND_INTERVAL:
            return
        self._last_discovery = now
        self.counters["client.local_discovery_out"] += 1
        bubble = build_packet(self.address, ALL_NODES, NEXT_HEADER_NONE, b"", hop_limit=DISCOVERY_HOP_LIMIT)
        self._send(bubble, (DISCOVERY_ADDRESS, DISCOVERY_PORT))

    def next_deadline(self) -> float | None:
        oldest = next(iter(self.peers.values()), None)
        deadlines = [] if oldest is None else [oldest.heard + LOCAL_PEER_LIFETIME]
        if self._next_discovery is not None:
            deadlines.append(self._next_discovery)
        return min(deadlines, default=None)

    def on_timer(self, now: float) -> None:
        """Forget local peers not heard from for 600 s; send the periodic discovery bubble."""
        while self.peers:
            addr, peer = next(iter(self.peers.items()))
            if now < peer.heard + LOCAL_PEER_LIFETIME:
                break
            del self.peers[addr]
        if self._next_discovery is not None and now >= self._next_discovery:
            self._multicast(now)
            self._next_discovery = now + self._rng.uniform(*DISCOVERY_INTERVAL)

    # -- discovery in ----------------------------------------------------------------------

    def from_discovery(self, data: bytes, host: str, port: int, now: float) -> None:
        """A datagram on the discovery address: accept a valid local discovery bubble
        (RFC 4380 §5.2.3 case 4, §5.2.8) and answer it with a unicast bubble."""
        if not self._accept.allow(now):
            self.counters.drop("local-discovery-rate")
            return
        address = self.address
        if address is None or not self.discovery:
            self.counters.drop("local-discovery-offline")
            return
        try:
            datagram = parse_datagram(data)
        except ParseError as error:
            self.counters.drop(error.reason)
            return
        header = datagram.header
        if datagram.auth or datagram.origin or not is_bubble(header) or header.destination != ALL_NODES:
            self.counters.drop("local-discovery-not-bubble")
            return
        source = header.source
        if source[:4] != address[:4] or source == address:
            self.counters.drop("local-discovery-source")  # not a Teredo address of our prefix, or our own
            return
        ip = ipv4_to_int(host)
        if port == 0 or not usable_local_ipv4(ip) or not self.on_link(ip):
            self.counters.drop("local-discovery-off-link")  # RFC 4380 §5.2.8: MUST discard
            return
        if teredo_mapping(source)[0] != self._mapped_ip:
            self.counters.drop("local-discovery-other-nat")  # RFC 4380 §5.2.8: MAY discard
            return
        self.counters["client.local_discovery_in"] += 1
        peer = self._learn(source, ((host, port),), DISCOVERED, now)
        if peer.pacing.allow(now):
            self.counters["client.local_bubble"] += 1
            self._send(self._bubble(source), (host, port))

    # -- hairpinning and local delivery -------------------------------------------------------

    def alternates(self, trailer: bytes, source: bytes) -> tuple[Mapping, ...] | None:
        """The local addresses a bubble's Alternate Address trailer offers for `source`;
        () when there are none we may use (no trailer, hairpinning off, or the peer is behind
        another NAT); None for a malformed trailer (counted: the caller drops the datagram)."""
        if not trailer:
            return ()
        try:
            found = parse_trailers(trailer)
        except ParseError as error:
            self.counters.drop(error.reason)
            return None
        if not self.hairpinning or teredo_mapping(source)[0] != self._mapped_ip:
            return ()
        return tuple(
            (int_to_ipv4(ip), port)
            for trailer_option in found if isinstance(trailer_option, AlternateAddressTrailer)
            for ip, port in trailer_option.entries if usable_local_ipv4(ip)
        )

    def probe(self, addr: bytes, bubble: bytes, offered: tuple[Mapping, ...], now: float) -> None:
        """Bubble a peer at its local addresses, known or just `offered` by its trailer
        (RFC 4380 §5.2.4 case 3: and a discovery bubble, when it was found that way)."""
        if offered:
            self._learn(addr, offered, ALTERNATE, now)
        peer = self.peers.get(addr)
        if peer is None:
            return
        for mapping in peer.mappings:
            self.counters["client.local_bubble"] += 1
            self._send(bubble, mapping)
        if peer.how == DISCOVERED:
            self._multicast(now)

    def vouches(self, addr: bytes, mapping: Mapping, offered: tuple[Mapping, ...], looking: bool, now: float) -> bool:
        """Whether a packet from Teredo client `addr` at `mapping` (not the mapping its address
        embeds) comes from a local address we may trust it at: one learned by discovery or
        an earlier trailer (RFC 4380 §5.2.3 case 5), or one its own trailer offers while we
        are `looking` for that peer."""
        peer = self.peers.get(addr)
        known = peer is not None and mapping in peer.mappings
        if not known and not (looking and mapping in offered):
            return False
        if not known:
            peer = self._learn(addr, offered, ALTERNATE, now)
        assert peer is not None
        peer.trusted_at = mapping
        if peer.how == ALTERNATE:
            self.hairpinning_used = True
            self.counters["client.hairpin_trusted"] += 1
        else:
            self.counters["client.local_trusted"] += 1
        return True

    def _learn(self, addr: bytes, mappings: tuple[Mapping, ...], how: str, now: float) -> LocalPeer:
        peer = self.peers.pop(addr, None)
        if peer is None:
            if len(self.peers) >= self._max_peers:
                self.peers.popitem(last=False)
                self.counters["client.local_evicted"] += 1
            peer = LocalPeer(how, now)
        elif how == DISCOVERED:
            peer.how = DISCOVERED
        peer.heard = now
        for mapping in mappings:
            if mapping in peer.mappings:
                peer.mappings.remove(mapping)
            peer.mappings.append(mapping)
        del peer.mappings[:-ALTERNATE_ADDRESS_MAX_ENTRIES]  # as many as one trailer offers
        self.peers[addr] = peer
        return peer

    def _bubble(self, destination: bytes) -> bytes:
        assert self.address is not None
        return build_bubble(self.address, destination) + self.trailer

    # -- reporting -------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        """Like Windows' netsh: is it on, was hairpinning used, and the local peers."""
        return {
            "local_discovery": self.discovery,
            "hairpinning": self.hairpinning,
            "hairpinning_used": self.hairpinning_used,
            "local_peers": [
                {
                    "address": str(ipaddress.IPv6Address(addr)),
                    "local": [f"{host}:{port}" for host, port in peer.mappings],
                    "learned_by": peer.how,
                    "trusted_at": None if peer.trusted_at is None else f"{peer.trusted_at[0]}:{peer.trusted_at[1]}",
                    "idle": round(now - peer.heard, 3),
                }
                for addr, peer in reversed(self.peers.items())
            ],
        }
