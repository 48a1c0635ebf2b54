"""The TUN offloads' C extension against the pure-Python reference, and the TUN with offloads:
the same packets and verdicts as the plain path (hypothesis), malformed frames counted."""

from __future__ import annotations

import random
import shutil
import struct
from collections import defaultdict
from ipaddress import IPv6Address, IPv6Network

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.pair import testing
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance import offload
from teredo_appliance.offload import VNET_F_NEEDS_CSUM, VNET_GSO_NONE, VNET_GSO_TCPV6, VNET_HDR_LEN
from teredo_appliance.roles.client_datapath import ClientPeers
from teredo_appliance.roles.relay_machine import RelayMachine
from teredo_appliance.stats import TUN_IN, TUN_OUT, Counters
from teredo_appliance.tunnel import Tunnel, _IPv6Packets
from teredo_appliance.wire.address import TeredoAddress, ipv4_to_int
from tests.fakes import FakeLink, kernel_sends, tun_device
from tests.offload_reference import (
    ACK,
    CWR,
    FIN,
    PSH,
    SYN,
    Flow,
    checksum,
    parse_tcp,
    plain_frame,
    super_packet,
    tcp_checksum_ok,
    tcp_packet,
    unpack_vnet,
    vnet_header,
)

EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NEEDS_EXTENSION = None if offload.available() else "the C extension teredo_appliance._offload is not built"

flows = st.builds(
    Flow,
    sport=st.sampled_from([40000, 40001]),
    ack=st.sampled_from([7, 8]),
    options=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]),
)


class BuildTests(SynchronousTestCase):
    def test_extension_built_where_a_compiler_is(self) -> None:
        """A silent fallback to the plain path would cost the offloads unnoticed."""
        if shutil.which("cc") is None:
            self.skipTest("no C compiler: the plain path is expected")
        self.assertTrue(offload.available(), "a C compiler is present but teredo_appliance._offload did not "
                        "build or import (pip install . / build_ext --inplace for a checkout)")


class ChecksumTests(SynchronousTestCase):
    skip = NEEDS_EXTENSION

    def test_rfc1071_example(self) -> None:
        self.assertEqual(offload.checksum(bytes.fromhex("0001f203f4f5f6f7")), ~0xDDF2 & 0xFFFF)

    @EXAMPLES
    @given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
    def test_matches_reference(self, data: bytes, initial: int) -> None:
        self.assertEqual(offload.checksum(data, initial), checksum(data, initial))

    @EXAMPLES
    @given(st.binary(min_size=1, max_size=200), st.integers(0, 199))
    def test_unaligned_buffers(self, data: bytes, skip: int) -> None:
        view = memoryview(data)[min(skip, len(data)):]
        self.assertEqual(offload.checksum(view), checksum(bytes(view)))


class SegmentTests(SynchronousTestCase):
    skip = NEEDS_EXTENSION

    @EXAMPLES
    @given(flows, st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=20000), st.integers(500, 1400),
           st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN]))
    def test_super_packet_cut_into_valid_segments(self, flow: Flow, seq: int, payload: bytes, mss: int,
                                                  flags: int) -> None:
        segments = offload.segment(super_packet(flow, seq, payload, mss, flags))
        self.assertEqual(len(segments), -(-len(payload) // mss))
        parsed = [parse_tcp(segment) for segment in segments]
        self.assertEqual(b"".join(s.payload for s in parsed), payload)
        for index, (segment, fields) in enumerate(zip(segments, parsed, strict=True)):
            self.assertTrue(tcp_checksum_ok(segment), index)
            self.assertLessEqual(len(fields.payload), mss)
            self.assertEqual(fields.seq, (seq + index * mss) % 2**32)
            last = index == len(segments) - 1
            self.assertEqual(fields.flags, flags if last else flags & ~(FIN | PSH))
            self.assertEqual(segment[:4] + segment[6:40], tcp_packet(flow, 0, b"")[:4] + tcp_packet(flow, 0, b"")[6:40])

    def test_ecn_super_packet_sends_cwr_once(self) -> None:
        frame = bytearray(super_packet(Flow(), 1, bytes(3000), 1000, ACK | CWR))
        frame[1] |= 0x80  # VIRTIO_NET_HDR_GSO_ECN
        flags = [parse_tcp(s).flags for s in offload.segment(bytes(frame))]
        self.assertEqual(flags, [ACK | CWR, ACK, ACK])

    def test_plain_frame_is_the_packet(self) -> None:
        packet = tcp_packet(Flow(), 5, b"data")
        self.assertEqual(offload.segment(plain_frame(packet)), [packet])

    def test_partial_checksum_completed(self) -> None:
        """A small packet with NEEDS_CSUM (TUN_F_CSUM): the checksum field holds the
        pseudo-header sum, the rest is ours to add."""
        packet = bytearray(tcp_packet(Flow(), 5, b"hello"))
        struct.pack_into("!H", packet, 56, ~checksum(packet[8:40] + struct.pack("!IxxxB", len(packet) - 40, 6))
                         & 0xFFFF)
        frame = vnet_header(VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, 40, 16) + bytes(packet)
        self.assertEqual(offload.segment(frame), [tcp_packet(Flow(), 5, b"hello")])

    def test_malformed_frames_are_errors_with_reasons(self) -> None:
        good = super_packet(Flow(), 1, bytes(3000), 1000)
        cases = {
            "vnet-short": good[:5],
            "gso-bad-length": good[:-1],
            "gso-zero-size": good[:4] + b"\0\0" + good[6:],
            "gso-unsupported": good[:1] + b"\x03" + good[2:],  # UDP GSO
            "gso-not-tcp": good[:16] + b"\x11" + good[17:],
            "gso-too-many-segments": super_packet(Flow(), 1, bytes(3000), 10),
            "csum-out-of-range": vnet_header(VNET_F_NEEDS_CSUM, 0, 0, 0, 60, 16) + tcp_packet(Flow(), 1, b""),
        }
        for reason, frame in cases.items():
            with self.subTest(reason):
                error = self.assertRaises(ValueError, offload.segment, frame)
                self.assertEqual(str(error), reason)

    @EXAMPLES
    @given(st.binary(max_size=VNET_HDR_LEN), st.binary(max_size=300), st.integers(0, 3000), st.integers(0, 200))
    def test_fuzzed_frames_never_crash(self, header: bytes, tail: bytes, size: int, cut: int) -> None:
        """Any bytes, or a real super-packet with a fuzzed header or cut short: packets or ValueError."""
        real = super_packet(Flow(), 1, bytes(size), 1200)
        for frame in (header + tail, header + real[len(header):], real[:len(real) - cut]):
            try:
                packets = offload.segment(frame)
            except ValueError:
                continue
            self.assertIsInstance(packets, list)


class CoalesceTests(SynchronousTestCase):
    skip = NEEDS_EXTENSION

    def kernel(self, frames: list[bytes]) -> list[bytes]:
        """What the kernel makes of our writes: GSO frames cut up again (segment is tested above)."""
        return [packet for frame in frames for packet in offload.segment(frame)]

    def test_in_order_segments_merge_into_one_gso_frame(self) -> None:
        flow = Flow()
        payloads = [bytes([n]) * 1200 for n in range(5)] + [b"x" * 100]
        packets = [tcp_packet(flow, 1000 + 1200 * n, p, ACK | (PSH if n == 5 else 0)) for n, p in enumerate(payloads)]
        [frame] = offload.coalesce(packets)
        flags, gso, hdr_len, gso_size, start, offset = unpack_vnet(frame)
        self.assertEqual((flags, gso, hdr_len, gso_size, start, offset),
                         (VNET_F_NEEDS_CSUM, VNET_GSO_TCPV6, 60, 1200, 40, 16))
        merged = parse_tcp(frame[VNET_HDR_LEN:])
        self.assertEqual((merged.seq, merged.flags, merged.payload), (1000, ACK | PSH, b"".join(payloads)))
        # The checksum field: the pseudo-header sum (not complemented) of the merged length.
        body = frame[VNET_HDR_LEN:]
        pseudo = ~checksum(body[8:40] + struct.pack("!IxxxB", len(body) - 40, 6)) & 0xFFFF
        self.assertEqual(struct.unpack_from("!H", body, 56)[0], pseudo)
        self.assertEqual(self.kernel([frame]), packets)

    def test_bad_checksum_is_never_merged(self) -> None:
        flow = Flow()
        packets = [tcp_packet(flow, 1200 * n, bytes(1200)) for n in range(4)]
        bad = bytearray(packets[2])
        bad[-1] ^= 1
        packets[2] = bytes(bad)
        frames = offload.coalesce(packets)
        self.assertIn(plain_frame(packets[2]), frames)
        self.assertEqual(sorted(self.kernel(frames)), sorted(packets))

    def test_out_of_order_and_other_flows_never_merge(self) -> None:
        one, two = Flow(), Flow(sport=40001)
        packets = [tcp_packet(one, 0, bytes(1000)), tcp_packet(one, 2000, bytes(1000)),
                   tcp_packet(two, 1000, bytes(1000))]
        self.assertEqual(offload.coalesce(packets), [plain_frame(p) for p in packets])

    def test_control_segments_go_alone(self) -> None:
        flow = Flow()
        packets = [tcp_packet(flow, 0, bytes(100), ACK | SYN), tcp_packet(flow, 100, b""),
                   tcp_packet(flow, 100, bytes(100), ACK | FIN)]
        self.assertEqual(offload.coalesce(packets), [plain_frame(p) for p in packets])

    @EXAMPLES
    @given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 1300), st.booleans(), st.booleans()), max_size=60),
           st.lists(st.binary(max_size=100), max_size=3))
    def test_kernel_gets_back_every_packet_in_flow_order(self, plan: list[tuple[int, int, bool, bool]],
                                                         junk: list[bytes]) -> None:
        """Interleaved flows with gaps, short segments, bad checksums and junk: the segments
        of the frames are exactly the packets, each flow in its order."""
        flows_ = [Flow(sport=40000 + n) for n in range(3)]
        seqs = [0, 0, 0]
        packets = list(junk)
        for which, size, gap, corrupt in plan:
            packet = tcp_packet(flows_[which], seqs[which] + (size if gap else 0), bytes([which]) * size)
            if corrupt:
                packet = packet[:-1] + bytes([packet[-1] ^ 0xFF])
            seqs[which] += size
            packets.append(packet)
        frames = offload.coalesce(packets)
        self.assertLessEqual(len(frames), len(packets))
        out = self.kernel(frames)
        self.assertEqual(sorted(out), sorted(packets))

        def by_flow(items: list[bytes]) -> dict[bytes, list[bytes]]:
            grouped = defaultdict(list)
            for item in items:
                grouped[item[8:44] if len(item) >= 44 else b""].append(item)
            return grouped

        self.assertEqual(by_flow(out), by_flow(packets))
        for frame in frames:
            if frame[1] == VNET_GSO_TCPV6:
                self.assertTrue(all(tcp_checksum_ok(p) for p in offload.segment(frame)))

    @EXAMPLES
    @given(st.lists(st.binary(max_size=200), max_size=20))
    def test_junk_passes_through_unchanged(self, packets: list[bytes]) -> None:
        self.assertEqual(offload.coalesce(packets), [plain_frame(p) for p in packets])


class BigFrames(testing.Tunnel):
    SEND_BUFFER_SIZE = 70000  # a GSO frame


class OffloadTunnelTests(SynchronousTestCase):
    """The Tunnel with offloads on a memory TUN (its ioctls for offloads fail: headers only)."""

    skip = NEEDS_EXTENSION

    def setUp(self) -> None:
        self.system = testing.MemoryIOSystem()
        self.system.registerSpecialDevice(testing.Tunnel._DEVICE_NAME, BigFrames)
        self.reactor = MemoryReactorClock()
        self.received: list[bytes] = []
        self.counters = Counters()
        self.tun = Tunnel("teredo", 1280, self.received.append, counters=self.counters, reactor=self.reactor,
                          system=self.system, link_factory=lambda name: FakeLink(name, []), offload=True)
        self.tun.open()

    def test_opened_with_vnet_header(self) -> None:
        self.assertTrue(tun_device(self.system).tunnelMode & offload.IFF_VNET_HDR)
        self.assertTrue(self.tun.status()["offload"])

    def test_super_packet_read_as_segments(self) -> None:
        payload = bytes(range(256)) * 20
        ipv6_no_payload = plain_frame(b"\x60" + bytes(39))
        kernel_sends(self.system, self.reactor, super_packet(Flow(), 9, payload, 1220), ipv6_no_payload)
        self.assertEqual(len(self.received), 6)
        self.assertEqual(b"".join(parse_tcp(p).payload for p in self.received[:5]), payload)
        self.assertEqual(self.counters["tun.gso_reads"], 1)

    def test_super_packet_handed_over_whole(self) -> None:
        """With `on_segments`, the segments of one read arrive together; a failing handler
        costs a counted drop."""
        reads: list[list[bytes]] = []
        self.tun._protocol.on_segments = reads.append
        frame = super_packet(Flow(), 9, bytes(5000), 1220)
        kernel_sends(self.system, self.reactor, frame)
        self.assertEqual(reads, [offload.segment(frame)])
        self.assertEqual(self.received, [])
        self.assertEqual(self.counters[TUN_IN], sum(map(len, reads[0])))
        self.tun._protocol.on_segments = lambda packets: 1 / 0
        kernel_sends(self.system, self.reactor, frame)
        self.assertEqual(self.counters.drops(), {"internal-error": 1})
        self.flushLoggedErrors(ZeroDivisionError)

    def test_malformed_frames_are_counted_drops(self) -> None:
        kernel_sends(self.system, self.reactor, b"\x00\x04", super_packet(Flow(), 9, bytes(3000), 1000)[:-7])
        self.assertEqual(self.received, [])
        self.assertEqual(self.counters.drops(), {"tun.offload-vnet-short": 1, "tun.offload-gso-bad-length": 1})

    def test_held_writes_leave_merged(self) -> None:
        packets = [tcp_packet(Flow(), 1200 * n, bytes(1200)) for n in range(10)]
        self.tun.hold()
        for packet in packets:
            self.tun.write(packet)
        self.assertEqual(list(tun_device(self.system).writeBuffer), [])  # held
        self.tun.release()
        written = list(tun_device(self.system).writeBuffer)
        self.assertEqual(len(written), 1)
        self.assertEqual(offload.segment(written[0]), packets)
        self.assertEqual(self.counters["tun.gso_writes"], 1)
        self.assertEqual(self.counters[TUN_OUT], sum(map(len, packets)) - 9 * 60)

    def test_unheld_write_is_one_plain_frame(self) -> None:
        packet = tcp_packet(Flow(), 1, b"x")
        self.tun.write(packet)
        self.assertEqual(list(tun_device(self.system).writeBuffer), [plain_frame(packet)])


class FuzzedReadTests(SynchronousTestCase):
    """Whatever a VNET_HDR read holds, it becomes packets for the role or a counted drop."""

    skip = NEEDS_EXTENSION

    @EXAMPLES
    @given(st.lists(st.one_of(
        st.binary(max_size=200),  # noise
        st.tuples(st.binary(min_size=VNET_HDR_LEN, max_size=VNET_HDR_LEN), st.integers(0, 5000)).map(
            lambda t: t[0] + super_packet(Flow(), 1, bytes(t[1]), 1000)[VNET_HDR_LEN:]),  # any header
        st.tuples(st.integers(0, 5000), st.integers(1, 100), st.integers(1, 1400)).map(
            lambda t: super_packet(Flow(), 1, bytes(t[0]), t[2])[:-t[1]]),  # cut short
    ), max_size=10), st.booleans())
    def test_never_raises(self, frames: list[bytes], whole: bool) -> None:
        delivered: list[bytes] = []
        handed: list[list[bytes]] = []
        counters = Counters()
        reads = _IPv6Packets(delivered.append, counters, handed.append if whole else None)
        reads.vnet = True
        for frame in frames:
            before = (len(delivered), len(handed), sum(counters.drops().values()))
            reads.datagramReceived(frame)  # raises nothing
            after = (len(delivered), len(handed), sum(counters.drops().values()))
            self.assertNotEqual(after, before, frame)  # packets, or a counted drop
        self.assertNotIn("internal-error", counters.drops())
        for packet in delivered + [p for segments in handed for p in segments]:
            self.assertGreaterEqual(len(packet), 40)
            self.assertEqual(packet[0] >> 4, 6)


class SameVerdictTests(SynchronousTestCase):
    """Reads: the role sees the same packets whether the kernel sent one super-packet or its
    segments one by one, whatever the frame."""

    skip = NEEDS_EXTENSION

    @EXAMPLES
    @given(st.binary(min_size=1, max_size=8000), st.integers(600, 1300), st.binary(max_size=64))
    def test_super_packet_and_its_segments(self, payload: bytes, mss: int, junk: bytes) -> None:
        assume(-(-len(payload) // mss) <= 128)
        plain_in: list[bytes] = []
        plain_counters = Counters()
        plain = _IPv6Packets(plain_in.append, plain_counters)
        vnet_in: list[bytes] = []
        vnet_counters = Counters()
        vnet = _IPv6Packets(vnet_in.append, vnet_counters)
        vnet.vnet = True
        frame = super_packet(Flow(), 77, payload, mss)
        for packet in [*offload.segment(frame), junk]:
            plain.datagramReceived(packet)
        for read in (frame, plain_frame(junk)):
            vnet.datagramReceived(read)
        self.assertEqual(vnet_in, plain_in)
        self.assertEqual(vnet_counters.drops(), plain_counters.drops())
        self.assertEqual(vnet_counters[TUN_IN], plain_counters[TUN_IN])


TEREDO_PREFIX = IPv6Network("2001::/32")
TRUSTED = TeredoAddress(ipv4_to_int("198.18.0.1"), 0, 40000, ipv4_to_int("198.18.0.200")).pack()
UNTRUSTED = TeredoAddress(ipv4_to_int("198.18.0.1"), 0, 40001, ipv4_to_int("198.18.0.201")).pack()
NATIVE = IPv6Address("2001:db8:1::2").packed
ME = IPv6Address("2001:0:c612:1:1c6b:3203:39ed:ff9b").packed
destinations = st.sampled_from([TRUSTED, UNTRUSTED, NATIVE, IPv6Address("ff02::1").packed])


class Recorder:
    """A machine's sends and writes, in order."""

    def __init__(self) -> None:
        self.out: list[tuple[str, bytes, object]] = []

    def send(self, payload: bytes, mapping: object) -> None:
        self.out.append(("send", payload, mapping))

    def send_all(self, payloads: list[bytes], mapping: object) -> None:
        self.out.extend(("send", payload, mapping) for payload in payloads)

    def write(self, packet: bytes) -> None:
        self.out.append(("write", packet, None))


class MachineVerdictTests(SynchronousTestCase):
    """A super-packet's segments handed over at once get exactly the verdicts they get one by one."""

    skip = NEEDS_EXTENSION

    def segments(self, source: bytes, destination: bytes, size: int, mss: int) -> list[bytes]:
        return offload.segment(super_packet(Flow(source=source, destination=destination), 1, bytes(size), mss))

    @EXAMPLES
    @given(st.lists(st.tuples(destinations, st.integers(1, 9000), st.integers(900, 1400)), min_size=1, max_size=6))
    def test_relay(self, reads: list[tuple[bytes, int, int]]) -> None:
        recorders, machines, counters = [Recorder(), Recorder()], [], [Counters(), Counters()]
        for recorder, counted, send_all in zip(recorders, counters, (None, recorders[1].send_all), strict=True):
            machine = RelayMachine(TEREDO_PREFIX, 1280, 8, recorder.send, recorder.write, counted,
                                   reachable_ipv4=lambda ip: True, send_all=send_all)
            machine.peers.trust(TRUSTED, ("198.18.0.200", 40000), 0.0)
            machines.append(machine)
        plain, batched = machines
        for now, (destination, size, mss) in enumerate(reads):
            segments = self.segments(NATIVE, destination, size, mss)
            wakes = [w for w in (plain.from_tun(s, float(now)) for s in segments) if w is not None]
            self.assertEqual(batched.from_tun_segments(segments, float(now)), min(wakes, default=None))
        self.assertEqual(recorders[1].out, recorders[0].out)
        self.assertEqual(counters[1], counters[0])

    @EXAMPLES
    @given(st.lists(st.tuples(destinations, st.booleans(), st.integers(1, 9000), st.integers(900, 1400)),
                    min_size=1, max_size=6))
    def test_client(self, reads: list[tuple[bytes, bool, int, int]]) -> None:
        recorders, clients, counters = [Recorder(), Recorder()], [], [Counters(), Counters()]
        for recorder, counted, send_all in zip(recorders, counters, (None, recorders[1].send_all), strict=True):
            client = ClientPeers(recorder.send, recorder.write, counted, rng=random.Random(6081), send_all=send_all)
            client.attach(ME, ipv4_to_int("198.18.0.1"))
            client.table.get_or_create(TRUSTED, ("198.18.0.200", 40000), 0.0)
            client.table.trust(TRUSTED, ("198.18.0.200", 40000), 0.0)
            clients.append(client)
        plain, batched = clients
        for now, (destination, ours, size, mss) in enumerate(reads):
            segments = self.segments(ME if ours else NATIVE, destination, size, mss)
            moved = any([plain.from_tun(s, float(now)) for s in segments])
            self.assertEqual(batched.from_tun_segments(segments, float(now)), moved)
        self.assertEqual(recorders[1].out, recorders[0].out)
        self.assertEqual(counters[1], counters[0])
        self.assertEqual(batched.stats(), plain.stats())
