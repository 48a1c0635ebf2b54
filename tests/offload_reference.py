"""Pure-Python references for the TUN offloads: the Internet checksum (RFC 1071), IPv6/TCP
segments with the pseudo-header checksum (RFC 8200 §8.1), virtio_net_hdr frames.

Slow and obvious on purpose: the C extension is checked against them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from teredo_appliance.offload import VNET_F_NEEDS_CSUM, VNET_GSO_NONE, VNET_GSO_TCPV6, VNET_HDR_LEN

NH_TCP = 6
ACK, PSH, FIN, SYN, CWR = 0x10, 0x08, 0x01, 0x02, 0x80
HOST_A = IPv6Address("2001:db8:1::2").packed
HOST_B = IPv6Address("2001:0:c612:2::1").packed
_VNET = struct.Struct("=BBHHHH")


def checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071: the ones' complement of the ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(packet: bytes, length: int) -> bytes:
    return packet[8:40] + struct.pack("!IxxxB", length, NH_TCP)


def tcp_checksum_ok(packet: bytes) -> bool:
    return checksum(pseudo_header(packet, len(packet) - 40) + packet[40:]) == 0


@dataclass(frozen=True)
class Flow:
    source: bytes = HOST_A
    destination: bytes = HOST_B
    sport: int = 40000
    dport: int = 5001
    ack: int = 7
    window: int = 512
    options: bytes = b""
    hop_limit: int = 64


def tcp_packet(flow: Flow, seq: int, payload: bytes, flags: int = ACK) -> bytes:
    """A well-formed IPv6/TCP segment with its checksum."""
    offset = (20 + len(flow.options)) // 4
    tcp = struct.pack("!HHIIBBHHH", flow.sport, flow.dport, seq & 0xFFFFFFFF, flow.ack, offset << 4, flags,
                      flow.window, 0, 0) + flow.options + payload
    header = struct.pack("!IHBB", 6 << 28, len(tcp), NH_TCP, flow.hop_limit) + flow.source + flow.destination
    total = checksum(pseudo_header(header, len(tcp)) + tcp)
    return header + tcp[:16] + struct.pack("!H", total) + tcp[18:]


@dataclass(frozen=True)
class Segment:
    """The fields a test looks at."""

    seq: int
    flags: int
    payload: bytes
    header_length: int


def parse_tcp(packet: bytes) -> Segment:
    """Parse an IPv6/TCP segment, asserting its lengths."""
    assert packet[0] >> 4 == 6 and packet[6] == NH_TCP, packet[:8].hex()
    assert struct.unpack_from("!H", packet, 4)[0] + 40 == len(packet)
    header_length = 40 + (packet[52] >> 4) * 4
    return Segment(struct.unpack_from("!I", packet, 44)[0], packet[53], packet[header_length:], header_length)


def vnet_header(flags: int = 0, gso_type: int = VNET_GSO_NONE, hdr_len: int = 0, gso_size: int = 0,
                csum_start: int = 0, csum_offset: int = 0) -> bytes:
    return _VNET.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def unpack_vnet(frame: bytes) -> tuple[int, int, int, int, int, int]:
    return _VNET.unpack_from(frame)


def super_packet(flow: Flow, seq: int, payload: bytes, mss: int, flags: int = ACK) -> bytes:
    """A TSO frame as the kernel hands it over: one header, the payload, the checksum field
    holding the pseudo-header sum only (NEEDS_CSUM)."""
    packet = bytearray(tcp_packet(flow, seq, payload, flags))
    length = len(packet) - 40
    partial = ~checksum(pseudo_header(bytes(packet), length)) & 0xFFFF
    struct.pack_into("!H", packet, 56, partial)
    header_length = 60 + len(flow.options)
    return vnet_header(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV6, header_length, mss, 40, 16) + bytes(packet)


def plain_frame(packet: bytes) -> bytes:
    return bytes(VNET_HDR_LEN) + packet
