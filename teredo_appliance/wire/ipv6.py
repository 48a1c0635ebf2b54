"""IPv6 headers and the ICMPv6 messages Teredo needs (RFC 8200, RFC 4443).

Packets are plain `bytes`; parsing returns a small immutable header so the roles can
decide what to do without copying the payload.
"""

from __future__ import annotations

import struct
from array import array
from sys import byteorder
from typing import NamedTuple

from teredo_appliance.wire.constants import IPV6_HEADER_LENGTH, MIN_MTU
from teredo_appliance.wire.errors import ParseError

HEADER_LENGTH = IPV6_HEADER_LENGTH
NEXT_HEADER_ICMPV6 = 58  # RFC 4443 §1
NEXT_HEADER_NONE = 59  # RFC 8200 §4.7: what a Teredo bubble carries

ICMPV6_DEST_UNREACHABLE = 1  # RFC 4443 §3.1
ICMPV6_PACKET_TOO_BIG = 2  # RFC 4443 §3.2
ICMPV6_ECHO_REQUEST = 128  # RFC 4443 §4.1
ICMPV6_ECHO_REPLY = 129  # RFC 4443 §4.2
UNREACHABLE_NO_ROUTE = 0
UNREACHABLE_ADDRESS = 3  # RFC 4443 §3.1: what a relay says when a Teredo peer never answers

_HEADER = struct.Struct("!IHBB16s16s")
_ECHO = struct.Struct("!BBHHH")


class IPv6Header(NamedTuple):
    payload_length: int
    next_header: int
    hop_limit: int
    source: bytes
    destination: bytes
    traffic_flow: int = 0x60000000  # version, traffic class and flow label word


def parse_header(packet: bytes) -> IPv6Header:
    """The fixed header of `packet`; raises ParseError unless it is a complete IPv6 packet."""
    if len(packet) < HEADER_LENGTH:
        raise ParseError("ipv6-short")
    word, plen, nxt, hops, src, dst = _HEADER.unpack_from(packet)
    if word >> 28 != 6:
        raise ParseError("not-ipv6")
    if HEADER_LENGTH + plen > len(packet):
        raise ParseError("ipv6-truncated")
    return IPv6Header(plen, nxt, hops, src, dst, word)


def build_packet(
    source: bytes, destination: bytes, next_header: int, payload: bytes, hop_limit: int = 64,
    traffic_flow: int = 0x60000000,
) -> bytes:
    return _HEADER.pack(traffic_flow, len(payload), next_header, hop_limit, source, destination) + payload


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum, computed in native order and swapped back."""
    if len(data) & 1:
        data += b"\0"
    total = sum(array("H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    total = ~total & 0xFFFF
    return ((total >> 8) | ((total & 0xFF) << 8)) if byteorder == "little" else total


def icmpv6_checksum(source: bytes, destination: bytes, message: bytes) -> int:
    """RFC 4443 §2.3: checksum over the pseudo-header and `message` (checksum field zeroed)."""
    pseudo = source + destination + struct.pack("!II", len(message), NEXT_HEADER_ICMPV6)
    return internet_checksum(pseudo + message)


def build_icmpv6(
    source: bytes, destination: bytes, icmp_type: int, code: int, body: bytes, hop_limit: int = 64
) -> bytes:
    """A whole IPv6 packet carrying one ICMPv6 message, checksum filled in."""
    message = struct.pack("!BBH", icmp_type, code, 0) + body
    checksum = icmpv6_checksum(source, destination, message)
    message = message[:2] + checksum.to_bytes(2, "big") + message[4:]
    return build_packet(source, destination, NEXT_HEADER_ICMPV6, message, hop_limit)


def build_echo(
    source: bytes, destination: bytes, identifier: int, sequence: int, data: bytes,
    reply: bool = False, hop_limit: int = 64,
) -> bytes:
    kind = ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO_REQUEST
    return build_icmpv6(source, destination, kind, 0, struct.pack("!HH", identifier, sequence) + data, hop_limit)


class Echo(NamedTuple):
    reply: bool
    identifier: int
    sequence: int
    data: bytes


def is_echo(packet: bytes, header: IPv6Header) -> bool:
    """Whether `packet` carries an ICMPv6 echo request or reply (code 0, header complete)."""
    return (
        header.next_header == NEXT_HEADER_ICMPV6
        and header.payload_length >= _ECHO.size
        and packet[HEADER_LENGTH] in (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
        and packet[HEADER_LENGTH + 1] == 0
    )


def parse_echo(packet: bytes, header: IPv6Header) -> Echo | None:
    """The echo request/reply in `packet`, or None if it carries something else."""
    if not is_echo(packet, header):
        return None
    icmp_type, _code, _checksum, identifier, sequence = _ECHO.unpack_from(packet, HEADER_LENGTH)
    data = packet[HEADER_LENGTH + _ECHO.size : HEADER_LENGTH + header.payload_length]
    return Echo(icmp_type == ICMPV6_ECHO_REPLY, identifier, sequence, data)


def checksum_ok(packet: bytes, header: IPv6Header) -> bool:
    """Whether an ICMPv6 packet's checksum verifies (used where trust depends on content)."""
    message = packet[HEADER_LENGTH : HEADER_LENGTH + header.payload_length]
    return internet_checksum(
        header.source + header.destination + struct.pack("!II", len(message), NEXT_HEADER_ICMPV6) + message
    ) == 0


def is_multicast(address: bytes) -> bool:
    return address[0] == 0xFF


def is_link_local(address: bytes) -> bool:
    return address[0] == 0xFE and address[1] & 0xC0 == 0x80


def error_allowed(invoking: bytes, header: IPv6Header) -> bool:
    """RFC 4443 §2.4 (e): never answer an ICMPv6 error, a multicast or an unspecified source."""
    if is_multicast(header.destination) or is_multicast(header.source) or header.source == bytes(16):
        return False
    if header.next_header == NEXT_HEADER_ICMPV6 and len(invoking) > HEADER_LENGTH:
        return invoking[HEADER_LENGTH] >= ICMPV6_ECHO_REQUEST  # types < 128 are errors
    return True


def _quoted(invoking: bytes) -> bytes:
    """RFC 4443 §2.4 (c): as much of the invoking packet as fits in a 1280-byte error."""
    return invoking[: MIN_MTU - HEADER_LENGTH - 8]


def build_unreachable(source: bytes, invoking: bytes, destination: bytes, code: int) -> bytes:
    """Destination Unreachable from `source` (the reporting node) back to `destination`.

    Errors take the ordinary hop limit (64), as anything this host originates: they may be
    routed to a distant sender, and 255 is what on-link-only messages (ND) carry."""
    return build_icmpv6(source, destination, ICMPV6_DEST_UNREACHABLE, code, bytes(4) + _quoted(invoking))


def build_packet_too_big(source: bytes, invoking: bytes, destination: bytes, mtu: int) -> bytes:
    return build_icmpv6(source, destination, ICMPV6_PACKET_TOO_BIG, 0, struct.pack("!I", mtu) + _quoted(invoking))


def quoted_packet(packet: bytes, header: IPv6Header) -> bytes | None:
    """The invoking packet quoted by an ICMPv6 error message, or None if `packet` is not one."""
    if header.next_header != NEXT_HEADER_ICMPV6 or header.payload_length < 8 + HEADER_LENGTH:
        return None
    if packet[HEADER_LENGTH] >= ICMPV6_ECHO_REQUEST:
        return None
    return packet[HEADER_LENGTH + 8 : HEADER_LENGTH + header.payload_length]
