"""Teredo UDP payloads (RFC 4380 §5.1.1): optional headers in front of an IPv6 packet.

Parse order is fixed: an Authentication indicator (`00 01`), then an Origin indication
(`00 00`), then the IPv6 packet. Anything else is dropped with a reason.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.ipv6 import HEADER_LENGTH, NEXT_HEADER_NONE, IPv6Header, build_packet, parse_header

AUTH_TYPE = 0x0001  # RFC 4380 §5.1.1: Authentication indicator
ORIGIN_TYPE = 0x0000  # RFC 4380 §5.1.1: Origin indication
AUTH_FIXED_LENGTH = 13  # type(2) + id-len(1) + auth-len(1) + nonce(8) + confirmation(1)
NONCE_LENGTH = 8
ORIGIN_LENGTH = 8

_ORIGIN = struct.Struct("!HHI")


class AuthIndicator(NamedTuple):
    nonce: bytes
    confirmation: int = 0
    client_id: bytes = b""
    auth_value: bytes = b""

    def pack(self) -> bytes:
        return (
            struct.pack("!HBB", AUTH_TYPE, len(self.client_id), len(self.auth_value))
            + self.client_id
            + self.auth_value
            + self.nonce
            + bytes((self.confirmation,))
        )


class OriginIndication(NamedTuple):
    """Where the server saw a packet come from: the mapped IPv4 (int) and UDP port."""

    ip: int
    port: int

    def pack(self) -> bytes:
        return origin_indication(self.ip, self.port)


def origin_indication(ip: int, port: int) -> bytes:
    """RFC 4380 §5.1.1: `00 00 | ~port | ~IPv4`."""
    return _ORIGIN.pack(ORIGIN_TYPE, port ^ 0xFFFF, ip ^ 0xFFFFFFFF)


class Datagram(NamedTuple):
    auth: AuthIndicator | None
    origin: OriginIndication | None
    packet: bytes  # the IPv6 packet alone
    header: IPv6Header
    # What followed the IPv6 packet: RFC 6081 trailers, unparsed, so a server or relay can
    # forward them untouched (wire/trailers.py reads them). Empty, and no copy, when none.
    trailer: bytes = b""


def parse_datagram(data: bytes) -> Datagram:
    """Split a Teredo UDP payload into its headers and IPv6 packet, or raise ParseError."""
    auth = origin = None
    offset = 0
    if len(data) >= 2 and data[0] == 0:
        if data[1] == AUTH_TYPE:
            auth, offset = _parse_auth(data)
        if len(data) >= offset + 2 and data[offset] == 0 and data[offset + 1] == ORIGIN_TYPE:
            if len(data) < offset + ORIGIN_LENGTH:
                raise ParseError("origin-truncated")
            _, port, ip = _ORIGIN.unpack_from(data, offset)
            origin = OriginIndication(ip ^ 0xFFFFFFFF, port ^ 0xFFFF)
            offset += ORIGIN_LENGTH
    packet = data[offset:] if offset else data
    header = parse_header(packet)
    end = HEADER_LENGTH + header.payload_length
    if len(packet) == end:
        return Datagram(auth, origin, packet, header)
    return Datagram(auth, origin, packet[:end], header, packet[end:])


def _parse_auth(data: bytes) -> tuple[AuthIndicator, int]:
    if len(data) < AUTH_FIXED_LENGTH:
        raise ParseError("auth-truncated")
    id_len, auth_len = data[2], data[3]
    end = AUTH_FIXED_LENGTH + id_len + auth_len
    if len(data) < end:
        raise ParseError("auth-truncated")
    client_id = data[4 : 4 + id_len]
    auth_value = data[4 + id_len : 4 + id_len + auth_len]
    nonce = data[end - 9 : end - 1]
    return AuthIndicator(nonce, data[end - 1], client_id, auth_value), end


def is_bubble(header: IPv6Header) -> bool:
    """RFC 4380 §2.8: an IPv6 header with no payload and next header 59 (hop limit unchecked)."""
    return header.payload_length == 0 and header.next_header == NEXT_HEADER_NONE


def build_bubble(source: bytes, destination: bytes) -> bytes:
    return build_packet(source, destination, NEXT_HEADER_NONE, b"", hop_limit=0)
