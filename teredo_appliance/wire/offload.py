"""TCP segmentation offload across a TUN with IFF_VNET_HDR: coalesce and segment TCP/IPv6.

With a virtio-net header in front of every packet (include/uapi/linux/virtio_net.h), one
TUN write may carry up to 64 KiB of one TCP flow that the kernel cuts into segments
itself (GSO), so a burst of segments costs one system call and one trip through the
kernel's forwarding path instead of dozens. `coalesce` does what Linux's TCP GRO does
with a batch of packets about to be written: it merges consecutive in-order segments
of one flow, and `segment` is the inverse the kernel applies (and the one a TSO read
would need). Only segments whose checksum is right are merged: the kernel recomputes
the checksum of what it cuts, so merging a corrupted segment would make it valid.
"""

from __future__ import annotations

import struct

from teredo_appliance.wire.ipv6 import HEADER_LENGTH

# struct virtio_net_hdr (little-endian on the TUN of a little-endian host; x86, arm64).
VNET_HEADER = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HEADER_LEN = VNET_HEADER.size
VNET_F_NEEDS_CSUM = 1
VNET_GSO_NONE = 0
VNET_GSO_TCPV6 = 4
PLAIN = bytes(VNET_HEADER_LEN)  # the header of a packet that needs nothing done

NEXT_HEADER_TCP = 6  # RFC 9293 (IANA protocol number)
TCP_MIN_HEADER = 20  # RFC 9293 §3.1
TCP_CHECKSUM_OFFSET = 16
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = 1, 2, 4, 8, 16, 32, 64, 128
MAX_IPV6_PAYLOAD = 65535  # RFC 8200 §3: the payload length field (no jumbograms)
MAX_SEGMENTS = 64  # Linux's GRO never merges more (MAX_GRO_SKBS)
_SEQ = struct.Struct("!I")


def ones_sum(data: bytes) -> int:
    """RFC 1071 one's-complement sum of `data` as 16-bit words, folded, not inverted.

    As 2**16 = 1 modulo 0xffff, the sum is the big-endian integer of `data` modulo 0xffff
    (0xffff and 0 being the same number): computed in C on one big integer.
    """
    if len(data) & 1:
        data += b"\0"
    value = int.from_bytes(data, "big")
    total = value % 0xFFFF
    return total if total or not value else 0xFFFF


def _pseudo_sum(packet: bytes, tcp_length: int) -> int:
    """The RFC 8200 §8.1 pseudo-header's sum (addresses, upper-layer length, next header)."""
    return ones_sum(packet[8:40] + struct.pack("!IxxxB", tcp_length, NEXT_HEADER_TCP))


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def tcp_checksum_ok(packet: bytes) -> bool:
    """Whether a TCP/IPv6 packet (no extension headers) carries a correct checksum."""
    return _fold(_pseudo_sum(packet, len(packet) - HEADER_LENGTH) + ones_sum(packet[HEADER_LENGTH:])) == 0xFFFF


def _tcp_fields(packet: bytes) -> tuple[int, int] | None:
    """(TCP header length, flags) of a packet GRO may merge, else None.

    That is an IPv6 packet whose next header is TCP, whose length field is exact, with
    data, flags ACK (and perhaps PSH) only, and a correct checksum.
    """
    size = len(packet)
    if size < HEADER_LENGTH + TCP_MIN_HEADER or packet[0] >> 4 != 6 or packet[6] != NEXT_HEADER_TCP:
        return None
    if (packet[4] << 8 | packet[5]) + HEADER_LENGTH != size:
        return None
    header_length = (packet[HEADER_LENGTH + 12] >> 4) * 4
    flags = packet[HEADER_LENGTH + 13]
    if header_length < TCP_MIN_HEADER or HEADER_LENGTH + header_length >= size:
        return None
    if flags & ~TCP_PSH != TCP_ACK or not tcp_checksum_ok(packet):
        return None
    return header_length, flags


class _Run:
    """Consecutive segments of one flow being merged."""

    __slots__ = ("closed", "first", "header_length", "next_seq", "payload", "push", "segments", "size")

    def __init__(self, packet: bytes, header_length: int, flags: int) -> None:
        self.first = packet
        self.header_length = header_length
        self.segments = [packet]
        self.size = self.payload = len(packet) - HEADER_LENGTH - header_length  # size: the gso_size
        self.next_seq = (_SEQ.unpack_from(packet, HEADER_LENGTH + 4)[0] + self.size) & 0xFFFFFFFF
        self.push = bool(flags & TCP_PSH)
        self.closed = self.push

    def extend(self, packet: bytes, header_length: int, flags: int) -> bool:
        """Append `packet` if it continues this run as GRO would merge it."""
        first, start = self.first, HEADER_LENGTH
        size = len(packet) - HEADER_LENGTH - header_length
        if (
            self.closed
            or header_length != self.header_length
            or size > self.size
            or len(self.segments) >= MAX_SEGMENTS
            or _SEQ.unpack_from(packet, start + 4)[0] != self.next_seq
            or packet[:4] != first[:4]  # version, traffic class, flow label
            or packet[7] != first[7]  # hop limit
            or packet[start + 8:start + 12] != first[start + 8:start + 12]  # acknowledgment
            or packet[start + 14:start + 16] != first[start + 14:start + 16]  # window (flags: both ACK)
            or packet[start + 18:start + header_length] != first[start + 18:start + header_length]  # urgent, options
            or header_length + self.payload + size > MAX_IPV6_PAYLOAD
        ):
            return False
        self.segments.append(packet)
        self.payload += size
        self.next_seq = (self.next_seq + size) & 0xFFFFFFFF
        self.push = bool(flags & TCP_PSH)
        self.closed = self.push or size < self.size
        return True

    def build(self) -> tuple[bytes, bytes]:
        """(virtio-net header, packet): the first segment alone, or all as one GSO packet."""
        if len(self.segments) == 1:
            return PLAIN, self.first
        first, header_length = self.first, self.header_length
        headers = HEADER_LENGTH + header_length
        payload = b"".join(s[headers:] for s in self.segments)
        tcp_length = header_length + len(payload)
        flags = first[HEADER_LENGTH + 13] | (TCP_PSH if self.push else 0)
        tcp = bytearray(first[HEADER_LENGTH:headers])
        tcp[13] = flags
        # NEEDS_CSUM: the checksum field holds the pseudo-header sum; the kernel adds the rest.
        struct.pack_into("!H", tcp, TCP_CHECKSUM_OFFSET, _pseudo_sum(first, tcp_length))
        ip = first[:4] + struct.pack("!H", tcp_length) + first[6:HEADER_LENGTH]
        vnet = VNET_HEADER.pack(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV6, headers, self.size, HEADER_LENGTH,
                                TCP_CHECKSUM_OFFSET)
        return vnet, ip + bytes(tcp) + payload


def coalesce(packets: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The packets as (virtio-net header, packet) to write, consecutive in-order TCP
    segments of each flow merged into GSO packets (order within every flow kept)."""
    out: list[_Run | bytes] = []
    open_runs: dict[bytes, _Run] = {}
    for packet in packets:
        fields = _tcp_fields(packet)
        if fields is None:
            out.append(packet)
            continue
        flow = packet[8:40] + packet[HEADER_LENGTH:HEADER_LENGTH + 4]  # addresses, ports
        run = open_runs.get(flow)
        if run is not None and run.extend(packet, *fields):
            continue
        run = open_runs[flow] = _Run(packet, *fields)
        out.append(run)
    return [(PLAIN, item) if isinstance(item, bytes) else item.build() for item in out]


def segment(vnet: bytes, packet: bytes) -> list[bytes]:
    """The packets a GSO TCP/IPv6 packet stands for, cut as Linux's tcp_gso_segment does
    (FIN and PSH on the last segment only, CWR on the first only), checksums complete."""
    _flags, gso_type, _hdr_len, gso_size, _start, _offset = VNET_HEADER.unpack(vnet)
    if gso_type & ~0x80 != VNET_GSO_TCPV6:
        return [packet]
    header_length = (packet[HEADER_LENGTH + 12] >> 4) * 4
    headers = HEADER_LENGTH + header_length
    payload = packet[headers:]
    seq = _SEQ.unpack_from(packet, HEADER_LENGTH + 4)[0]
    flags = packet[HEADER_LENGTH + 13]
    segments = []
    for offset in range(0, len(payload), gso_size):
        chunk = payload[offset:offset + gso_size]
        last = offset + gso_size >= len(payload)
        tcp = bytearray(packet[HEADER_LENGTH:headers])
        _SEQ.pack_into(tcp, 4, (seq + offset) & 0xFFFFFFFF)
        tcp[13] = flags & ~((0 if last else TCP_FIN | TCP_PSH) | (TCP_CWR if offset else 0))
        tcp[TCP_CHECKSUM_OFFSET:TCP_CHECKSUM_OFFSET + 2] = b"\0\0"
        ip = packet[:4] + struct.pack("!H", header_length + len(chunk)) + packet[6:HEADER_LENGTH]
        body = bytes(tcp) + chunk
        struct.pack_into("!H", tcp, TCP_CHECKSUM_OFFSET, 0xFFFF - _fold(_pseudo_sum(ip, len(body)) + ones_sum(body)))
        segments.append(ip + bytes(tcp) + chunk)
    return segments
