"""roles/udp: the UDP glue of every role never raises on send and contains bad packets."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from teredo_appliance.roles.udp import IP_MTU_DISCOVER, IP_PMTUDISC_DONT, TeredoUDP, listen_udp
from teredo_appliance.stats import Counters


class RealSocketTests(TestCase):
    def test_send_never_raises(self) -> None:
        counters = Counters()
        protocol = TeredoUDP(lambda data, source: None, counters, "test")
        self.assertFalse(protocol.send(b"x", ("127.0.0.1", 9)))  # not listening yet
        port = listen_udp(reactor, protocol, "127.0.0.1", 0)
        self.addCleanup(port.stopListening)
        self.assertTrue(protocol.send(b"x", ("127.0.0.1", 9)))
        self.assertFalse(protocol.send(bytes(70000), ("127.0.0.1", 9)))  # larger than a UDP datagram
        self.assertEqual(counters.drops(), {"socket-closed": 1, "send-emsgsize": 1})
        self.assertEqual(counters.traffic(), {"udp_out": 1})  # only what the kernel took

    def test_ipv4_packets_never_carry_df(self) -> None:
        """RFC 4380 §5.1.2: Teredo never sets DF, so NATs and paths may fragment."""
        protocol = TeredoUDP(lambda data, source: None, Counters())
        port = listen_udp(reactor, protocol, "127.0.0.1", 0)
        self.addCleanup(port.stopListening)
        self.assertEqual(port.socket.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER), IP_PMTUDISC_DONT)

    def test_closed_port_counts_instead_of_raising(self) -> None:
        counters = Counters()
        protocol = TeredoUDP(lambda data, source: None, counters)
        port = listen_udp(reactor, protocol, "127.0.0.1", 0)
        d = port.stopListening()

        def sent(_: object) -> None:
            self.assertFalse(protocol.send(b"x", ("127.0.0.1", 9)))
            self.assertEqual(counters.drops(), {"socket-closed": 1})

        return d.addCallback(sent) if d is not None else sent(None)


class ContainmentTests(SynchronousTestCase):
    def test_a_failing_handler_is_counted_and_logged_once(self) -> None:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        counters = Counters()

        def deliver(data: bytes, source: tuple[str, int]) -> None:
            raise RuntimeError("bug")

        protocol = TeredoUDP(deliver, counters, "test")
        protocol.makeConnection(FakeDatagramTransport())
        for _ in range(3):
            protocol.datagramReceived(b"x", ("198.18.0.1", 3544))
        self.assertEqual(counters.drops(), {"internal-error": 3})
        self.assertEqual(len([e for e in events if e.get("log_failure")]), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_in_memory_transport_receives_sends(self) -> None:
        transport = FakeDatagramTransport()
        protocol = TeredoUDP(lambda data, source: None, Counters())
        protocol.makeConnection(transport)
        self.assertTrue(protocol.send(b"payload", ("198.18.0.1", 3544)))
        self.assertEqual(transport.written, [(b"payload", ("198.18.0.1", 3544))])

    def test_bytes_in_and_out_are_counted_apart_from_events(self) -> None:
        counters = Counters()
        protocol = TeredoUDP(lambda data, source: None, counters)
        protocol.makeConnection(FakeDatagramTransport())
        protocol.datagramReceived(bytes(61), ("198.18.0.1", 3544))
        protocol.datagramReceived(bytes(3), ("198.18.0.1", 3544))
        protocol.send(bytes(100), ("198.18.0.1", 3544))
        self.assertEqual(counters.traffic(), {"udp_in": 64, "udp_out": 100})
        self.assertEqual(counters.events(), {})
