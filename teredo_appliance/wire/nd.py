"""Router Solicitation / Advertisement as Teredo qualification uses them (RFC 4380 §5.2.1, §5.3.1).

A Teredo RS is a fixed packet (only the source differs for the cone variant); the RA
carries one Prefix Information option (the server's /64) and an MTU option.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from teredo_appliance.wire.address import is_global_ipv4
from teredo_appliance.wire.constants import (
    ALL_ROUTERS,
    LINK_LOCAL,
    LINK_LOCAL_CONE,
    MAX_MTU,
    MIN_MTU,
    TEREDO_PORT,
    TEREDO_PREFIX,
)
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.ipv6 import (
    HEADER_LENGTH,
    NEXT_HEADER_ICMPV6,
    IPv6Header,
    build_icmpv6,
    checksum_ok,
    is_link_local,
)
from teredo_appliance.wire.teredo import Datagram

ND_HOP_LIMIT = 255  # RFC 4861 §6.1: ND messages are only valid with hop limit 255
ICMPV6_ROUTER_SOLICITATION = 133
ICMPV6_ROUTER_ADVERTISEMENT = 134
OPTION_PREFIX_INFORMATION = 3  # RFC 4861 §4.6.2
OPTION_MTU = 5  # RFC 4861 §4.6.4
PREFIX_FLAG_AUTONOMOUS = 0x40
# RA "Retrans Timer": 2 s, the Teredo retransmission step (RFC 4380 §5.2.6); Miredo's
# and Microsoft's servers advertise it, so clients see the same RA from us.
RA_RETRANS_TIMER_MS = 2000
RS_SOURCE = LINK_LOCAL  # RFC 4380 §5.2.1: the two sources a qualification RS may have
RS_SOURCE_CONE = LINK_LOCAL_CONE

_RA_BODY = struct.Struct("!BBHII")  # cur hop limit, flags, router lifetime, reachable, retrans
_PREFIX_OPTION = struct.Struct("!BBBBIII16s")
_MTU_OPTION = struct.Struct("!BBHI")


def router_solicitation(cone: bool = False) -> bytes:
    """The qualification RS: no options, hop limit 255, to all-routers."""
    return build_icmpv6(
        RS_SOURCE_CONE if cone else RS_SOURCE, ALL_ROUTERS, ICMPV6_ROUTER_SOLICITATION, 0, bytes(4), ND_HOP_LIMIT
    )


def is_router_solicitation(packet: bytes, header: IPv6Header) -> bool:
    return (
        header.next_header == NEXT_HEADER_ICMPV6
        and header.payload_length >= 8
        and packet[HEADER_LENGTH] == ICMPV6_ROUTER_SOLICITATION
        and header.hop_limit == ND_HOP_LIMIT
        and packet[HEADER_LENGTH + 1] == 0
    )


def server_link_local(server_ip: int) -> bytes:
    """RFC 4380 §5.2.1: fe80::8000:<~3544>:<~server IPv4>, the source of every RA."""
    return bytes.fromhex("fe800000000000008000") + struct.pack("!HI", TEREDO_PORT ^ 0xFFFF, server_ip ^ 0xFFFFFFFF)


def teredo_prefix64(server_ip: int, prefix32: bytes = TEREDO_PREFIX) -> bytes:
    """The /64 a server advertises: the Teredo /32 followed by its own IPv4 address."""
    return prefix32 + server_ip.to_bytes(4, "big") + bytes(8)


def router_advertisement(server_ip: int, destination: bytes, prefix: bytes, mtu: int) -> bytes:
    """The RA a server answers a qualification RS with (RFC 4380 §5.3.1)."""
    body = (
        _RA_BODY.pack(0, 0, 0, 0, RA_RETRANS_TIMER_MS)
        + _PREFIX_OPTION.pack(
            OPTION_PREFIX_INFORMATION, 4, 64, PREFIX_FLAG_AUTONOMOUS, 0xFFFFFFFF, 0xFFFFFFFF, 0, prefix
        )
        + _MTU_OPTION.pack(OPTION_MTU, 1, 0, mtu)
    )
    return build_icmpv6(
        server_link_local(server_ip), destination, ICMPV6_ROUTER_ADVERTISEMENT, 0, body, ND_HOP_LIMIT
    )


class RouterAdvertisement(NamedTuple):
    source: bytes
    destination: bytes
    prefixes: tuple[tuple[bytes, int], ...]  # (16-byte prefix, prefix length)
    mtu: int | None


def parse_router_advertisement(packet: bytes, header: IPv6Header) -> RouterAdvertisement:
    """Decode an RA and its options; raises ParseError for anything a client must ignore."""
    if header.next_header != NEXT_HEADER_ICMPV6 or header.payload_length < 16:
        raise ParseError("not-ra")
    if packet[HEADER_LENGTH] != ICMPV6_ROUTER_ADVERTISEMENT or packet[HEADER_LENGTH + 1] != 0:
        raise ParseError("not-ra")
    if header.hop_limit != ND_HOP_LIMIT:
        raise ParseError("ra-hop-limit")
    if not checksum_ok(packet, header):
        raise ParseError("ra-checksum")
    prefixes: list[tuple[bytes, int]] = []
    mtu = None
    offset, end = HEADER_LENGTH + 16, HEADER_LENGTH + header.payload_length
    while offset < end:
        if end - offset < 2 or packet[offset + 1] == 0:
            raise ParseError("ra-option")
        kind, length = packet[offset], packet[offset + 1] * 8
        if offset + length > end:
            raise ParseError("ra-option")
        if kind == OPTION_PREFIX_INFORMATION:
            if length != _PREFIX_OPTION.size:
                raise ParseError("ra-option")
            fields = _PREFIX_OPTION.unpack_from(packet, offset)
            prefixes.append((fields[7], fields[2]))
        elif kind == OPTION_MTU:
            if length != _MTU_OPTION.size or mtu is not None:
                raise ParseError("ra-option")
            mtu = _MTU_OPTION.unpack_from(packet, offset)[3]
        offset += length
    return RouterAdvertisement(header.source, header.destination, tuple(prefixes), mtu)


class QualificationAnswer(NamedTuple):
    """What a valid qualification RA tells a client (RFC 4380 §5.2.1)."""

    mapped_ip: int  # from the origin indication: our NAT mapping
    mapped_port: int
    prefix: bytes  # the 32-bit Teredo prefix advertised
    mtu: int  # the RA's MTU option, MIN_MTU without one


def check_qualification_ra(
    datagram: Datagram, source_ip: int, source_port: int, *,
    expected_source: int, server_ip: int, cone: bool, teredo_prefix: bytes,
) -> QualificationAnswer:
    """RFC 4380 §5.2.1 validity of an RA answering one of our RSs, or ParseError(reason).

    The caller matched the nonce and knows which server address (`expected_source`) the
    answer must come from and whether the RS was the cone one. The advertised prefix must
    be `teredo_prefix` (the configured /32, 4 bytes) followed by `server_ip`: a server may
    not move us into another prefix, let alone a multicast or link-local one.
    """
    if source_port != TEREDO_PORT:
        raise ParseError("port")
    if source_ip != expected_source:
        raise ParseError("source")
    if datagram.auth is None or datagram.auth.confirmation != 0:
        raise ParseError("confirmation")
    origin = datagram.origin
    if origin is None:
        raise ParseError("no-origin")
    try:
        ra = parse_router_advertisement(datagram.packet, datagram.header)
    except ParseError as error:
        raise ParseError(error.reason.removeprefix("ra-")) from None
    if ra.destination != (LINK_LOCAL_CONE if cone else LINK_LOCAL):
        raise ParseError("destination")
    if not is_link_local(ra.source):
        raise ParseError("source-not-link-local")
    if len(ra.prefixes) != 1:
        raise ParseError("prefix-count")
    prefix, length = ra.prefixes[0]
    if prefix[0] == 0xFF or (prefix[0] == 0xFE and prefix[1] & 0xC0 == 0x80):
        raise ParseError("prefix-scope")  # multicast ff00::/8, link-local fe80::/10
    if length != 64 or prefix[:4] != teredo_prefix or int.from_bytes(prefix[4:8], "big") != server_ip:
        raise ParseError("prefix")
    if ra.mtu is not None and not MIN_MTU <= ra.mtu <= MAX_MTU:
        raise ParseError("mtu")
    if not is_global_ipv4(origin.ip):
        raise ParseError("mapped-not-global")
    return QualificationAnswer(origin.ip, origin.port, prefix[:4], ra.mtu or MIN_MTU)
