"""The Teredo server's per-datagram decisions (RFC 4380 §5.3), with no I/O and no state.

`ServerMachine.handle()` takes one UDP payload and where it came from and returns at
most one thing to send: an RA (§5.3.2), a packet forwarded over UDP to a Teredo client
(§5.3.1), or a packet for the native IPv6 Internet (raw socket). Everything else is a
counted drop. What is sent is counted by the service once the send succeeded (the
output names its counter): a send the kernel refuses is a drop, not a forward.

A server is a packet pump, and the qualification RS is by far its most common datagram.
It is recognised by comparing bytes with the two canonical RSs and answered from a
precomputed RA: the nonce and the origin indication live outside the IPv6 packet, so
the RA packet and its checksum never change for a given RS source.
"""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import Callable

from teredo_appliance import accel
from teredo_appliance.config_model import DEFAULT_RS_BURST, DEFAULT_RS_RATE
from teredo_appliance.ratelimit import ipv4_rate_limit
from teredo_appliance.stats import Counters
from teredo_appliance.wire.address import FLAG_CONE, NON_GLOBAL_IPV4_MASKED, TEREDO_PREFIX, int_to_ipv4, is_global_ipv4
from teredo_appliance.wire.constants import MIN_MTU, TEREDO_PORT
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.ipv6 import NEXT_HEADER_ICMPV6, checksum_ok, is_echo, is_link_local
from teredo_appliance.wire.nd import (
    ALL_ROUTERS,
    RS_SOURCE,
    RS_SOURCE_CONE,
    is_router_solicitation,
    router_advertisement,
    router_solicitation,
    server_link_local,
    teredo_prefix64,
)
from teredo_appliance.wire.scope import is_global_unicast
from teredo_appliance.wire.teredo import AUTH_TYPE, AuthIndicator, is_bubble, parse_datagram

PRIMARY = "primary"
SECONDARY = "secondary"
RAW = "raw"  # the raw IPv6 socket: native destinations go by "regular IPv6 routing" (§5.3.1)

# Miredo and Microsoft's servers: the largest IPv6 payload a server relays. Room for the
# relay-finding echo; too small to make the server an open UDP relay. Bubbles carry none.
MAX_FORWARDED_PAYLOAD = 88
# RFC 6081 trailers behind a forwarded bubble get the same room: every trailer type at
# once (nonce, four alternate addresses, ND option, random port) takes about half of it.
MAX_FORWARDED_TRAILER = MAX_FORWARDED_PAYLOAD
_HOP_LIMIT_OFFSET = 7  # RFC 8200 §3: the hop limit byte of the IPv6 header
REACHABLE_CACHE_SIZE = 1 << 14  # IPv4 verdicts remembered (about 2 MB at most)
RS_RATE_TABLE_SIZE = 1 << 15  # source addresses the RS rate limit remembers (about 3 MB at most)

# Counter names; drop reasons go through Counters.drop() and read "drop.<reason>".
ANSWERED_RS = "rs-answered"
FORWARDED_TEREDO = "forwarded.teredo"  # to a client of ours, origin indication added
FORWARDED_TEREDO_OTHER = "forwarded.teredo-other-server"  # another server's client (§5.3.1)
FORWARDED_NATIVE = "forwarded.native"

Address = tuple[str, int]
REPLY = None  # destination "back to the datagram's source": saves turning it into text per RA
# (PRIMARY | SECONDARY | RAW, payload, destination or REPLY, the counter to bump once sent)
Output = tuple[str, bytes, Address | None, str]

_AUTH_NO_ID = struct.pack("!HBB", AUTH_TYPE, 0, 0)  # auth indicator, no client id or auth value
_NONCE_END = len(_AUTH_NO_ID) + 8
_RS_OFFSET = _NONCE_END + 1  # after the confirmation byte
_CONFIRMATION_AND_ORIGIN = struct.Struct("!BHHI")  # confirmation 0, then origin indication
_ORIGIN = struct.Struct("!HHI")  # RFC 4380 §5.1.1: 00 00 | ~port | ~IPv4
_OBFUSCATED = struct.Struct("!HI")  # ~port, ~IPv4 at offset 10 of a Teredo address


class ServerMachine:
    """Stateless §5.3 server for one primary/secondary address pair.

    The only state is the RS rate limit per source IPv4 address (bounded), so the only
    use of the clock input `now`; there is no timer. Everything else depends on the
    datagram and its source alone.
    """

    def __init__(
        self,
        primary: int,
        secondary: int,
        counters: Counters,
        prefix32: bytes = TEREDO_PREFIX,
        mtu: int = MIN_MTU,
        port: int = TEREDO_PORT,
        reachable_ipv4: Callable[[int], bool] = is_global_ipv4,
        rs_rate: float = DEFAULT_RS_RATE,
        rs_burst: int = DEFAULT_RS_BURST,
    ) -> None:
        """`reachable_ipv4` says which IPv4 sources and destinations are acceptable
        (§5.3.1 rule 3, §5.3.2); only tests on loopback widen it. Its verdicts are
        memoised (bounded): the check runs for every datagram. `rs_rate` and `rs_burst`
        limit the RAs sent to one IPv4 address."""
        self.primary = primary
        self.secondary = secondary
        self.counters = counters
        self.prefix32 = prefix32
        self.port = port
        self.reachable_ipv4 = functools.lru_cache(maxsize=REACHABLE_CACHE_SIZE)(reachable_ipv4)
        self.link_local = server_link_local(primary)
        self.prefix64 = teredo_prefix64(primary, prefix32)  # the /64 every RA advertises
        self._mtu = mtu
        rs_limit = ipv4_rate_limit(rs_rate, rs_burst, RS_RATE_TABLE_SIZE)
        self._rs_allowed = rs_limit.allow
        self._own = frozenset((primary, secondary))
        self._our_clients = prefix32 + primary.to_bytes(4, "big")  # first 64 bits of our clients
        # The RA packet for each canonical RS source (RFC 4380 §5.2.1): built once.
        self._ra_packet = {
            source: router_advertisement(primary, source, self.prefix64, mtu) for source in (RS_SOURCE, RS_SOURCE_CONE)
        }
        # Fast path: canonical RS packet -> (cone bit of its source, the RA packet answering it).
        self._fast_rs = {
            router_solicitation(cone): (cone, self._ra_packet[RS_SOURCE_CONE if cone else RS_SOURCE])
            for cone in (False, True)
        }
        # The same canonical-RS branch in C (accel.rsfast), None where it is not built: the
        # service's batched sockets answer those RSs there and hand every other datagram here.
        self.fast_path = None if accel.rsfast is None else accel.rsfast.FastPath(
            own=(primary, secondary),
            port=port,
            rs=(router_solicitation(False), router_solicitation(True)),
            ra=(self._ra_packet[RS_SOURCE], self._ra_packet[RS_SOURCE_CONE]),
            limiter=rs_limit,
            non_global=NON_GLOBAL_IPV4_MASKED if reachable_ipv4 is is_global_ipv4 else None,
            reachable=self.reachable_ipv4,
        )

    def handle(self, data: bytes, source_ip: int, source_port: int, which: str, now: float) -> Output | None:
        """What to send in answer to `data` received on socket `which` at `now`, or None (a counted drop)."""
        if source_port == self.port and source_ip in self._own:
            self.counters.drop("loop")  # Miredo's fix: a datagram from ourselves would bounce forever
            return None
        if not source_port:
            self.counters.drop("port-zero")  # no answer or origin indication can name port 0
            return None
        if data[:4] == _AUTH_NO_ID:
            fast = self._fast_rs.get(data[_RS_OFFSET:])
            if fast is not None:  # an authenticated canonical RS: §5.3.1 rules 1, 2 and 4 hold
                if not self.reachable_ipv4(source_ip):
                    self.counters.drop("source-not-global")  # rule 3
                    return None
                if not self._rs_allowed(source_ip, now):
                    self.counters.drop("rs-rate-limited")
                    return None
                return (
                    SECONDARY if (which == SECONDARY) != fast[0] else PRIMARY,
                    data[:_NONCE_END]
                    + _CONFIRMATION_AND_ORIGIN.pack(0, 0, source_port ^ 0xFFFF, source_ip ^ 0xFFFFFFFF)
                    + fast[1],
                    REPLY,
                    ANSWERED_RS,
                )
        return self._general(data, source_ip, source_port, which, now)

    def _general(self, data: bytes, source_ip: int, source_port: int, which: str, now: float) -> Output | None:
        """Every datagram the fast path does not take: §5.3.1 rules 1-7, then where it goes."""
        try:
            datagram = parse_datagram(data)  # rule 1
        except ParseError as error:
            self.counters.drop(error.reason)
            return None
        header, packet = datagram.header, datagram.packet
        bubble = is_bubble(header)
        if not bubble and header.next_header != NEXT_HEADER_ICMPV6:
            self.counters.drop("not-bubble-or-icmpv6")  # rule 2
            return None
        if not self.reachable_ipv4(source_ip):
            self.counters.drop("source-not-global")  # rule 3
            return None
        source, destination = header.source, header.destination
        teredo_source = source[:4] == self.prefix32
        if teredo_source and not self._embeds(source, source_ip, source_port):
            self.counters.drop("teredo-source-mismatch")  # rule 5 fails, so rule 7
            return None
        if destination == ALL_ROUTERS or destination == self.link_local:
            # For the server itself: only an RS from a matching Teredo source (rule 5) or a
            # link-local one to all-routers (rule 4) is processed.
            if not is_router_solicitation(packet, header):
                self.counters.drop("to-server-not-rs")
                return None
            if not teredo_source and not (is_link_local(source) and destination == ALL_ROUTERS):
                self.counters.drop("rs-bad-source")
                return None
            if not checksum_ok(packet, header):
                self.counters.drop("rs-bad-checksum")  # RFC 4861 §6.1.1
                return None
            return self._advertise(datagram.auth, source, source_ip, source_port, which, now)
        if not teredo_source and destination[:8] != self._our_clients:
            self.counters.drop("not-our-client")  # rule 6 fails, so rule 7
            return None
        if not is_global_unicast(destination):
            self.counters.drop("destination-not-global")
            return None
        # A relay's indirect bubble comes from its link-local address (RFC 4380 §5.4.1;
        # Miredo's and ours): harmless to a Teredo client, and bubbles never go native.
        if not is_global_unicast(source) and not (bubble and is_link_local(source)):
            self.counters.drop("ipv6-source-not-global")
            return None
        if not bubble and not is_echo(packet, header):
            self.counters.drop("not-bubble-or-echo")  # §5.3: "not ... other types of IPv6 packets"
            return None
        if header.payload_length > MAX_FORWARDED_PAYLOAD:
            self.counters.drop("too-big")
            return None
        if destination[:4] != self.prefix32:
            return self._route_native(packet, header.hop_limit, destination, bubble)
        if bubble and datagram.trailer:
            if len(datagram.trailer) > MAX_FORWARDED_TRAILER:
                self.counters.drop("trailer-too-big")
                return None
            packet += datagram.trailer  # RFC 6081 trailers travel with the bubble
        obfuscated_port, obfuscated_ip = _OBFUSCATED.unpack_from(destination, 10)
        ip, port = obfuscated_ip ^ 0xFFFFFFFF, obfuscated_port ^ 0xFFFF
        if not self.reachable_ipv4(ip):
            self.counters.drop("mapped-not-global")
            return None
        if port == self.port and ip in self._own:
            self.counters.drop("loop")
            return None
        if not port:
            self.counters.drop("port-zero")
            return None
        if destination[:8] == self._our_clients:
            origin = _ORIGIN.pack(0, source_port ^ 0xFFFF, source_ip ^ 0xFFFFFFFF)
            return PRIMARY, origin + packet, (int_to_ipv4(ip), port), FORWARDED_TEREDO
        return PRIMARY, packet, (int_to_ipv4(ip), port), FORWARDED_TEREDO_OTHER  # not our client: no origin

    def _route_native(self, packet: bytes, hop_limit: int, destination: bytes, bubble: bool) -> Output | None:
        """To the native IPv6 Internet the server is a router: the echo only, one hop fewer."""
        if bubble:
            self.counters.drop("native-not-echo")  # a bubble opens Teredo NAT mappings, nothing native
            return None
        if hop_limit <= 1:
            self.counters.drop("hop-limit-exceeded")  # RFC 8200 §3: a router never forwards it at 0
            return None
        # The raw socket sends the header as given; the ICMPv6 checksum does not cover the hop limit.
        packet = packet[:_HOP_LIMIT_OFFSET] + bytes((hop_limit - 1,)) + packet[_HOP_LIMIT_OFFSET + 1 :]
        return RAW, packet, (socket.inet_ntop(socket.AF_INET6, destination), 0), FORWARDED_NATIVE

    @staticmethod
    def _embeds(address: bytes, ip: int, port: int) -> bool:
        """§5.3.1 rule 5: the Teredo address carries the outer IPv4 address and UDP port."""
        obfuscated_port, obfuscated_ip = _OBFUSCATED.unpack_from(address, 10)
        return obfuscated_ip ^ 0xFFFFFFFF == ip and obfuscated_port ^ 0xFFFF == port

    def _advertise(
        self, auth: AuthIndicator | None, destination: bytes, source_ip: int, source_port: int, which: str, now: float
    ) -> Output | None:
        """§5.3.2: the RA, from the other address when the RS source has the cone bit."""
        if not self._rs_allowed(source_ip, now):
            self.counters.drop("rs-rate-limited")
            return None
        ra = self._ra_packet.get(destination) or router_advertisement(
            self.primary, destination, self.prefix64, self._mtu
        )
        # Like Miredo: the nonce is echoed with confirmation 0 and no client id, since
        # secure qualification is not offered.
        head = b"" if auth is None else _AUTH_NO_ID + auth.nonce + b"\x00"
        cone = bool(int.from_bytes(destination[8:10], "big") & FLAG_CONE)
        return (
            SECONDARY if (which == SECONDARY) != cone else PRIMARY,
            head + _ORIGIN.pack(0, source_port ^ 0xFFFF, source_ip ^ 0xFFFFFFFF) + ra,
            REPLY,
            ANSWERED_RS,
        )
