"""batchio and the batched UDP port: the same datagrams, sources, errors and verdicts as
the plain path, for the same inputs (hypothesis), on real loopback sockets."""

from __future__ import annotations

import errno
import os
import socket
from ipaddress import IPv6Address, IPv6Network
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance import batchio
from teredo_appliance.roles.relay_machine import RELAY_LINK_LOCAL, RelayMachine
from teredo_appliance.roles.udp import BatchedPort, TeredoUDP, listen_udp
from teredo_appliance.stats import Counters
from teredo_appliance.wire.address import TeredoAddress, ipv4_to_int
from teredo_appliance.wire.ipv6 import build_echo
from teredo_appliance.wire.teredo import build_bubble

LOOPBACK = "127.0.0.1"
BROADCAST = ("255.255.255.255", 9)  # sendto refuses it without SO_BROADCAST: EACCES
SERVER = "198.18.0.1"
NATIVE = IPv6Address("2001:db8:1::2").packed
EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


def drain(sock: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    got = []
    while True:
        try:
            got.append(sock.recvfrom(65535))
        except BlockingIOError:
            return got


class SocketsMixin:
    def sockets(self, count: int) -> list[socket.socket]:
        made = [udp_socket() for _ in range(count)]
        for sock in made:
            self.addCleanup(sock.close)  # type: ignore[attr-defined]
        return made


class ReceiverTests(SocketsMixin, SynchronousTestCase):
    if not batchio.available():
        skip = "recvmmsg/sendmmsg not available"

    @EXAMPLES
    @given(st.lists(st.tuples(st.binary(max_size=1500), st.integers(0, 1)), max_size=150))
    def test_receives_what_recvfrom_receives(self, datagrams: list[tuple[bytes, int]]) -> None:
        senders = self.sockets(2)
        batched, plain = self.sockets(2)
        for payload, which in datagrams:
            for target in (batched, plain):
                senders[which].sendto(payload, target.getsockname())
        receiver = batchio.Receiver(batched.fileno())
        self.addCleanup(receiver.close)
        got: list[tuple[bytes, tuple[str, int]]] = []
        while batch := receiver.receive():
            self.assertLessEqual(len(batch), batchio.BATCH)
            got += batch
        self.assertEqual(got, drain(plain))
        self.assertEqual(len(got), len(datagrams))

    def test_a_datagram_of_any_size_arrives_whole(self) -> None:
        sender, target = self.sockets(2)
        receiver = batchio.Receiver(target.fileno())
        self.addCleanup(receiver.close)
        sender.sendto(bytes(range(256)) * 255, target.getsockname())
        ((data, source),) = receiver.receive()
        self.assertEqual((data, source), (bytes(range(256)) * 255, sender.getsockname()))
        self.assertEqual(receiver.receive(), [])


class SenderTests(SocketsMixin, SynchronousTestCase):
    if not batchio.available():
        skip = "recvmmsg/sendmmsg not available"

    @EXAMPLES
    @given(st.lists(st.tuples(st.binary(max_size=1500), st.sampled_from(["a", "b", "broadcast", "huge"])),
                    max_size=150))
    def test_sends_and_refuses_what_sendto_does(self, datagrams: list[tuple[bytes, str]]) -> None:
        batched_out, plain_out, a, b = self.sockets(4)
        where = {"a": a.getsockname(), "b": b.getsockname(), "broadcast": BROADCAST, "huge": a.getsockname()}
        wanted = [(bytes(70000) if kind == "huge" else payload, where[kind]) for payload, kind in datagrams]
        plain_errors = []
        for index, (payload, destination) in enumerate(wanted):
            try:
                plain_out.sendto(payload, destination)
            except OSError as error:
                plain_errors.append((index, error.errno))
        plain_a, plain_b = drain(a), drain(b)
        sender = batchio.Sender(batched_out.fileno())
        self.addCleanup(sender.close)
        self.assertEqual(sender.send(wanted), plain_errors)
        self.assertEqual([d for d, _ in drain(a)], [d for d, _ in plain_a])
        self.assertEqual([d for d, _ in drain(b)], [d for d, _ in plain_b])
        self.assertTrue(all(code in (errno.EACCES, errno.EMSGSIZE) for _, code in plain_errors))


    @EXAMPLES
    @given(st.lists(st.tuples(st.integers(0, 1500), st.integers(1, 80), st.sampled_from(["a", "b", "broadcast"])),
                    max_size=8), st.booleans())
    def test_bursts_leave_as_they_would_one_by_one(self, bursts: list[tuple[int, int, str]], segment: bool) -> None:
        """Runs of equal datagrams (UDP GSO's case) arrive as sendto would send them, whole and in order."""
        batched_out, plain_out, a, b = self.sockets(4)
        for sock in (a, b):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        where = {"a": a.getsockname(), "b": b.getsockname(), "broadcast": BROADCAST}
        wanted = [(bytes([n % 256]) * size if n < count - 1 else bytes(size // 2), where[kind])
                  for size, count, kind in bursts for n in range(count)]
        plain_errors = []
        for index, (payload, destination) in enumerate(wanted):
            try:
                plain_out.sendto(payload, destination)
            except OSError as error:
                plain_errors.append((index, error.errno))
        plain_a, plain_b = drain(a), drain(b)
        sender = batchio.Sender(batched_out.fileno(), segment=segment)
        self.addCleanup(sender.close)
        self.assertEqual(sender.send(wanted), plain_errors)
        self.assertEqual([d for d, _ in drain(a)], [d for d, _ in plain_a])
        self.assertEqual([d for d, _ in drain(b)], [d for d, _ in plain_b])

    def test_a_burst_is_one_segmented_send(self) -> None:
        out, target = self.sockets(2)
        sender = batchio.Sender(out.fileno())
        self.addCleanup(sender.close)
        burst = [(bytes([n]) * 1280, target.getsockname()) for n in range(40)] + [(b"tail", target.getsockname())]
        self.assertEqual(sender.send(burst), [])
        self.assertEqual(sender.segmented, 1)
        self.assertEqual([d for d, _ in drain(target)], [d for d, _ in burst])


class RelayVerdictTests(SocketsMixin, SynchronousTestCase):
    """A relay behind the batched port gives every datagram the plain port's verdict: the same
    TUN writes, UDP replies and counters, for the same hostile or honest traffic."""

    if not batchio.available():
        skip = "recvmmsg/sendmmsg not available"

    def relay(self, batched: bool) -> tuple[Any, RelayMachine, list[bytes], Counters]:
        counters = Counters()
        written: list[bytes] = []
        now = [0.0]
        machine: RelayMachine | None = None

        def deliver(data: bytes, source: tuple[str, int]) -> None:
            assert machine is not None
            machine.from_udp(data, source, now[0])

        udp = TeredoUDP(deliver, counters, "relay")
        machine = RelayMachine(IPv6Network("2001::/32"), 1280, 100, udp.send, written.append, counters,
                               reachable_ipv4=lambda ip: True)
        port = listen_udp(reactor, udp, LOOPBACK, 0, batched=batched)
        self.assertIsInstance(port, BatchedPort) if batched else self.assertNotIsInstance(port, BatchedPort)

        def close() -> None:
            port.stopReading()
            port.connectionLost()

        self.addCleanup(close)
        return port, machine, written, counters

    @EXAMPLES
    @given(st.lists(st.tuples(st.sampled_from(["bubble", "echo", "stranger", "garbage", "short", "to-teredo"]),
                              st.binary(max_size=64)), max_size=100),
           st.integers(0, 20))
    def test_same_verdicts(self, inputs: list[tuple[str, bytes]], towards_peer: int) -> None:
        (peer,) = self.sockets(1)
        ip, port = peer.getsockname()
        me = TeredoAddress(ipv4_to_int(SERVER), 0x1C6B, port, ipv4_to_int(ip)).pack()
        stranger = TeredoAddress(ipv4_to_int(SERVER), 0, port ^ 1, ipv4_to_int(ip)).pack()
        make = {
            "bubble": lambda extra: build_bubble(me, NATIVE) + extra,
            "echo": lambda extra: build_echo(me, NATIVE, 7, 1, extra),
            "stranger": lambda extra: build_echo(stranger, NATIVE, 7, 1, extra),
            "garbage": lambda extra: b"\x00\x01" + extra,
            "short": lambda extra: extra[:39],
            "to-teredo": lambda extra: build_echo(me, stranger, 7, 1, extra),
        }
        datagrams = [make[kind](extra) for kind, extra in inputs]
        outcomes = []
        for batched in (False, True):
            listening, machine, written, counters = self.relay(batched)
            # Packets for the peer wait in its queue until it is trusted (then they leave in order).
            udp = listening.protocol
            udp.hold()
            for sequence in range(towards_peer):
                machine.from_tun(build_echo(NATIVE, me, 9, sequence, b"q"), 0.0)
            udp.release()
            for datagram in datagrams:
                peer.sendto(datagram, (LOOPBACK, listening.getHost().port))
            listening.doRead()
            # How the datagrams moved (batches, GSO sends) is not a verdict: leave it out.
            events = {k: v for k, v in counters.events().items() if k not in ("udp.batches", "udp.gso_sends")}
            outcomes.append((written, [d for d, _ in drain(peer)], events, counters.drops(), counters.traffic()))
        self.assertEqual(outcomes[0], outcomes[1])

    def test_a_trusted_peer_gets_its_queue_and_reaches_ipv6(self) -> None:
        (peer,) = self.sockets(1)
        ip, port = peer.getsockname()
        me = TeredoAddress(ipv4_to_int(SERVER), 0x1C6B, port, ipv4_to_int(ip)).pack()
        listening, machine, written, counters = self.relay(batched=True)
        udp = listening.protocol
        udp.hold()
        queued = [build_echo(NATIVE, me, 9, sequence, b"q") for sequence in range(3)]
        for packet in queued:
            machine.from_tun(packet, 0.0)
        udp.release()
        echo = build_echo(me, NATIVE, 7, 1, b"x")
        for datagram in (build_bubble(me, NATIVE), echo, b"junk"):
            peer.sendto(datagram, (LOOPBACK, listening.getHost().port))
        listening.doRead()
        self.assertEqual(written, [echo])
        # The direct bubble of the discovery (RFC 4380 §5.4.1), then the queue in arrival order.
        self.assertEqual([d for d, _ in drain(peer)], [build_bubble(RELAY_LINK_LOCAL, me), *queued])
        # The indirect bubble to the peer's server cannot leave a socket bound to loopback:
        # sendmmsg's refusal is counted as sendto's would be.
        self.assertEqual(counters.drops(), {"udp.ipv6-short": 1, "send-einval": 1})


class BatchedPortLifeTests(SynchronousTestCase):
    if not batchio.available():
        skip = "recvmmsg/sendmmsg not available"

    def test_ten_ports_opened_and_closed_leak_no_descriptor(self) -> None:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(10):
            udp = TeredoUDP(lambda data, source: None, Counters())
            port = listen_udp(reactor, udp, LOOPBACK, 0, batched=True)
            self.assertIsInstance(port, BatchedPort)
            port.stopReading()
            port.connectionLost()
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)
        self.assertFalse(udp.send(b"x", (LOOPBACK, 9)))  # closed: a counted drop, no error
        self.assertEqual(udp.counters.drops(), {"socket-closed": 1})
