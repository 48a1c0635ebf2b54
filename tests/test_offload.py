"""wire/offload: TCP/IPv6 segments merged for a GSO write cut back into exactly the same
segments, flows kept in order, corrupted or odd segments never merged (hypothesis)."""

from __future__ import annotations

import struct
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.wire.ipv6 import build_echo, internet_checksum
from teredo_appliance.wire.offload import (
    PLAIN,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    VNET_GSO_TCPV6,
    VNET_HEADER,
    coalesce,
    segment,
    tcp_checksum_ok,
)

CLIENT = bytes.fromhex("20010000c612000100008000ffffffef")  # a Teredo address
HOST = bytes.fromhex("20010db8000100000000000000000002")


def tcp_packet(src: bytes, dst: bytes, ports: tuple[int, int], seq: int, ack: int, flags: int, payload: bytes,
               options: bytes = b"", window: int = 502, hop_limit: int = 64) -> bytes:
    offset = (20 + len(options)) // 4 << 4
    tcp = struct.pack("!HHIIBBHHH", *ports, seq & 0xFFFFFFFF, ack, offset, flags, window, 0, 0) + options
    pseudo = src + dst + struct.pack("!IxxxB", len(tcp) + len(payload), 6)
    checksum = internet_checksum(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", checksum) + tcp[18:]
    return struct.pack("!IHBB", 0x60000000, len(tcp) + len(payload), 6, hop_limit) + src + dst + tcp + payload


def flow_stream(ports: tuple[int, int], mss: int, sizes: list[int], push_last: bool, start: int,
                options: bytes) -> list[bytes]:
    packets, seq = [], start
    for index, size in enumerate(sizes):
        flags = TCP_ACK | (TCP_PSH if push_last and index == len(sizes) - 1 else 0)
        packets.append(tcp_packet(CLIENT, HOST, ports, seq, 7777, flags, bytes([index % 251]) * min(size, mss),
                                  options))
        seq += min(size, mss)
    return packets


def by_flow(packets: list[bytes]) -> dict[bytes, list[bytes]]:
    flows: dict[bytes, list[bytes]] = defaultdict(list)
    for packet in packets:
        flows[packet[8:44] if packet[6] == 6 else b"other"].append(packet)
    return dict(flows)


def resegmented(written: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [piece for vnet, packet in written for piece in segment(vnet, packet)]


class CoalesceTests(SynchronousTestCase):
    def test_a_burst_becomes_one_gso_packet(self) -> None:
        burst = flow_stream((40000, 5001), 1220, [1220] * 10 + [300], True, 1000, b"\x01\x01\x08\x0a" + bytes(8))
        ((vnet, packet),) = coalesce(burst)
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HEADER.unpack(vnet)
        self.assertEqual((flags, gso_type, hdr_len, gso_size, csum_start, csum_offset),
                         (1, VNET_GSO_TCPV6, 40 + 32, 1220, 40, 16))
        self.assertEqual(len(packet), 40 + 32 + 10 * 1220 + 300)
        self.assertEqual(segment(vnet, packet), burst)

    def test_a_corrupted_segment_is_never_merged(self) -> None:
        burst = flow_stream((40000, 5001), 500, [500] * 5, False, 1, b"")
        bad = bytearray(burst[2])
        bad[-1] ^= 0xFF
        burst[2] = bytes(bad)
        self.assertFalse(tcp_checksum_ok(burst[2]))
        written = coalesce(burst)
        self.assertIn((PLAIN, burst[2]), written)
        self.assertEqual(resegmented(written), burst)

    def test_fin_syn_and_non_tcp_pass_alone(self) -> None:
        fin = tcp_packet(CLIENT, HOST, (1, 2), 5, 6, TCP_ACK | TCP_FIN, b"x")
        echo = build_echo(CLIENT, HOST, 1, 1, b"ping")
        self.assertEqual(coalesce([fin, echo, fin]), [(PLAIN, fin), (PLAIN, echo), (PLAIN, fin)])

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(st.integers(1, 1400), st.lists(st.integers(1, 1400), min_size=1, max_size=70), st.booleans(),
                      st.integers(0, 2**32 - 1), st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)])),
            min_size=1, max_size=4),
        st.randoms(use_true_random=False),
        st.sets(st.integers(0, 300), max_size=5),
    )
    def test_segmenting_the_merged_gives_back_every_packet(self, flows, random, corrupt) -> None:
        streams = [flow_stream((1000 + i, 5001), mss, sizes, push, start, options)
                   for i, (mss, sizes, push, start, options) in enumerate(flows)]
        streams.append([build_echo(CLIENT, HOST, 1, n, b"x" * n) for n in range(3)])
        packets: list[bytes] = []
        while any(streams):  # interleave the flows, each in its own order
            stream = random.choice([s for s in streams if s])
            packets.append(stream.pop(0))
        for index in corrupt:
            if index < len(packets):
                damaged = bytearray(packets[index])
                damaged[-1] ^= 0x55
                packets[index] = bytes(damaged)
        written = coalesce(packets)
        self.assertLessEqual(len(written), len(packets))
        for vnet, packet in written:
            if vnet != PLAIN:
                self.assertLessEqual(len(packet) - 40, 65535)
        self.assertEqual(by_flow(resegmented(written)), by_flow(packets))
        self.assertEqual(sorted(resegmented(written)), sorted(packets))
