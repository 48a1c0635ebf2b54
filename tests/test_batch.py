"""The server's batched path (recvmmsg/sendmmsg): the same verdicts and bytes as the plain path."""

from __future__ import annotations

import errno
import socket
from ipaddress import IPv4Address
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import FakeDatagramTransport
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from teredo_appliance import accel, batchio
from teredo_appliance.config_model import ServerConfig
from teredo_appliance.roles.server import ServerService
from teredo_appliance.roles.server_machine import ANSWERED_RS, PRIMARY, SECONDARY
from teredo_appliance.roles.udp import BatchedPort
from teredo_appliance.wire.address import int_to_ipv4, ipv4_to_int
from teredo_appliance.wire.teredo import parse_datagram
from tests.test_server import _datagrams, _known, _sources, require_raw_socket, rs
from tests.test_server import _free_port as free_port

CONFIG = ServerConfig(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2"), rs_rate=2.0, rs_burst=3)


def _service() -> tuple[ServerService, dict[str, FakeDatagramTransport]]:
    service = ServerService(CONFIG, Clock())
    transports = {}
    for which, protocol in service.protocols.items():
        transports[which] = FakeDatagramTransport()
        protocol.makeConnection(transports[which])
    return service, transports


class SameVerdictTests(SynchronousTestCase):
    """Hypothesis: a batch gives the same sends, in the same order per socket, and the same
    counters (drops by reason, RS rate limit included) as its datagrams one by one."""

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(_datagrams() | _known, _sources), max_size=80), st.sampled_from((PRIMARY, SECONDARY)))
    def test_batch_equals_one_by_one(self, batch: list[tuple[bytes, tuple[int, int]]], which: str) -> None:
        plain, plain_out = _service()
        batched, batched_out = _service()
        for data, (ip, port) in batch:
            plain.protocols[which].datagramReceived(data, (int_to_ipv4(ip), port))
        batched.protocols[which].batchReceived([(data, (int_to_ipv4(ip), port)) for data, (ip, port) in batch])
        self.assertEqual(batched.counters - plain.counters, {})
        self.assertEqual(plain.counters - batched.counters, {})
        for key in (PRIMARY, SECONDARY):
            self.assertEqual(batched_out[key].written, plain_out[key].written)

    def test_rate_limit_holds_within_one_batch(self) -> None:
        service, out = _service()
        service.protocols[PRIMARY].batchReceived([(rs(), ("198.18.0.100", 4000 + i)) for i in range(10)])
        self.assertEqual(service.counters[ANSWERED_RS], 3)  # rs_burst
        self.assertEqual(service.counters["drop.rs-rate-limited"], 7)
        self.assertEqual(len(out[PRIMARY].written), 3)


class BatchSocketTests(SynchronousTestCase):
    """The ctypes layer on real loopback sockets: exact bytes and sources, refusals counted."""

    def setUp(self) -> None:
        if not batchio.available():
            raise SkipTest("no recvmmsg/sendmmsg here")
        self.a = self.udp("127.0.0.1")
        self.b = self.udp("127.0.0.2")

    def udp(self, host: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind((host, 0))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        return sock

    def sender(self, sock: socket.socket) -> batchio.Sender:
        sender = batchio.Sender(sock.fileno())
        self.addCleanup(sender.close)
        return sender

    def receiver(self, sock: socket.socket) -> batchio.Receiver:
        receiver = batchio.Receiver(sock.fileno())
        self.addCleanup(receiver.close)
        return receiver

    def test_round_trip_of_more_than_one_batch(self) -> None:
        to_a = self.a.getsockname()
        payloads = [bytes([i]) * i for i in range(100)] + [b"\xff" * 65507]  # empty to the largest
        refused = self.sender(self.b).send([(p, to_a) for p in payloads])
        self.assertEqual(refused, [])
        receiver = self.receiver(self.a)
        got: list[batchio.Datagram] = []
        while batch := receiver.receive():
            self.assertLessEqual(len(batch), batchio.BATCH)
            got += batch
        source = self.b.getsockname()
        self.assertEqual(got, [(p, source) for p in payloads])

    def test_a_refused_datagram_does_not_stop_the_others(self) -> None:
        to_a = self.a.getsockname()
        datagrams = [(b"one", to_a), (b"bad", (to_a[0], 0)), (b"two", to_a)]
        self.assertEqual(self.sender(self.b).send(datagrams), [(1, errno.EINVAL)])
        self.assertEqual([d for d, _ in self.receiver(self.a).receive()], [b"one", b"two"])


class BatchedServiceSmokeTests(TestCase):
    """CI smoke: the appliance's server, on batched ports, answers a burst of RSs on loopback."""

    @inlineCallbacks
    def test_burst_of_rs_answered_through_batched_ports(self) -> Any:
        if not batchio.available():
            raise SkipTest("no recvmmsg/sendmmsg here")
        require_raw_socket()
        config = ServerConfig(IPv4Address("127.0.0.1"), IPv4Address("127.0.0.2"), rs_burst=1000)
        service = ServerService(config, reactor, port=free_port(), reachable_ipv4=lambda ip: True)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertTrue(all(isinstance(port, BatchedPort) for port in service._ports))
        self.assertEqual(service.fast_path, accel.rsfast is not None)  # RSs answered in C where it is built
        self.assertEqual(service.status()["fast_path"], service.fast_path)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(client.close)
        client.bind(("127.0.0.1", 0))
        client.setblocking(False)
        count = 150
        for _ in range(count):
            client.sendto(rs(), ("127.0.0.1", service.port))
        answers = []
        for _ in range(100):
            yield deferLater(reactor, 0.02, lambda: None)
            try:
                while True:
                    answers.append(client.recvfrom(2048))
            except BlockingIOError:
                pass
            if len(answers) >= count:
                break
        self.assertEqual(len(answers), count)
        for data, source in answers:
            self.assertEqual(source, ("127.0.0.1", service.port))
            datagram = parse_datagram(data)
            origin = datagram.origin.ip, datagram.origin.port
            self.assertEqual(origin, (ipv4_to_int("127.0.0.1"), client.getsockname()[1]))
        self.assertEqual(service.counters[ANSWERED_RS], count)
