"""roles/client.py with extensions.upnp: the port is mapped on the IGD before qualifying.

The client runs in memory (tests/test_client_service's reactor, TUN and netlink fakes);
its UPnP client talks over real loopback sockets to tests/fake_igd.FakeIGD.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import Logger, LogLevel
from twisted.trial import unittest

from teredo_appliance.config_model import ClientConfig, ClientExtensions
from teredo_appliance.roles.client import ClientService
from teredo_appliance.stats import Counters
from teredo_appliance.upnp import client as upnp_client
from teredo_appliance.upnp import messages
from teredo_appliance.upnp.client import SEARCH_WINDOW, IGDClient, PortMapper
from teredo_appliance.wire.address import ipv4_to_int
from tests.fake_igd import FakeIGD
from tests.fakes import FakeLanEdge, FakeLink, QuietWatch, memory_tun_system
from tests.test_client_service import LOCAL, SERVER, Reactor


class ClientUPnPTests(unittest.TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.igd = FakeIGD()
        self.target = self.igd.start()
        self.addCleanup(self.igd.stop)
        self.clock = Reactor()

    def service(self, upnp: bool) -> ClientService:
        config = ClientConfig(
            server_address=SERVER, interface="tclient", bind_port=3545, extensions=ClientExtensions(upnp=upnp)
        )

        def mapper(port: int, counters: Counters) -> PortMapper:
            client = IGDClient(reactor, ssdp_target=self.target, timeout=2.0, counters=counters)
            return PortMapper(client, port, clock=self.clock)

        service = ClientService(
            config,
            self.clock,
            tun_system=memory_tun_system(),
            link_factory=lambda name: FakeLink(name, []),
            netwatch=QuietWatch,
            link_watch=QuietWatch,
            local_address=lambda server: ipv4_to_int(LOCAL),
            rng=random.Random(1),
            port_mapper=mapper,
            lan_edge=FakeLanEdge,
        )
        service.privilegedStartService()
        service.startService()
        return service

    def stop(self, service: ClientService) -> defer.Deferred[None]:
        done = service.stopService()
        self.clock.advance(0)  # the in-memory TUN closes on the next turn
        return done

    def sent(self, service: ClientService) -> list[Any]:
        return list(service.udp.transport.written)  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def test_port_mapped_before_the_first_solicitation_and_deleted_on_stop(self) -> None:
        service = self.service(upnp=True)
        self.assertEqual(self.sent(service), [])  # no RS before the IGD has answered
        assert service.upnp is not None
        yield service.upnp.settled()
        self.assertEqual(self.igd.mappings, {3545: ("127.0.0.1", 3545)})
        self.assertTrue(any(host == SERVER for _, (host, _port) in self.sent(service)))
        status = service.status()["upnp"]
        self.assertEqual((status["mapped"], status["external_port"]), (True, 3545))
        self.assertEqual(service.counters["upnp.mapped"], 1)
        yield self.stop(service)
        self.assertEqual(self.igd.mappings, {})

    @defer.inlineCallbacks
    def test_no_igd_still_qualifies(self) -> None:
        self.igd.answer_search = False
        service = self.service(upnp=True)
        assert service.upnp is not None
        service.upnp.client.search_window = 0.2
        yield service.upnp.settled()
        self.assertEqual(service.counters["upnp.error.no-igd"], 1)
        self.assertTrue(self.sent(service))  # qualification went ahead without a mapping
        self.assertFalse(service.status()["upnp"]["mapped"])
        yield self.stop(service)

    def test_off_when_configured_off(self) -> None:
        service = self.service(upnp=False)
        self.assertIsNone(service.upnp)
        self.assertIsNone(service.status()["upnp"])
        self.assertTrue(self.sent(service))
        self.assertEqual(self.igd.searches, [])
        return self.stop(service)


class NoIGDDelayTests(unittest.SynchronousTestCase):
    """extensions.upnp is on by default: a LAN without an IGD costs qualification the SSDP
    search window and no more. The client's own IGD client, on an in-memory reactor."""

    def test_default_client_searches_then_qualifies_after_the_search_window(self) -> None:
        clock = Reactor()
        config = ClientConfig(server_address=SERVER, interface="tclient", local_discovery=False)
        self.assertTrue(config.extensions.upnp)
        service = ClientService(
            config, clock, tun_system=memory_tun_system(), link_factory=lambda name: FakeLink(name, []),
            netwatch=QuietWatch, link_watch=QuietWatch, local_address=lambda server: ipv4_to_int(LOCAL),
            rng=random.Random(1), lan_edge=FakeLanEdge,
        )
        service.privilegedStartService()
        service.startService()
        [search] = [protocol for _, protocol, _, _ in clock.udp_ports if protocol is not service.udp]
        [(m_search, target)] = search.transport.written
        self.assertIn(b"M-SEARCH", m_search)
        self.assertEqual(target, (messages.SSDP_ADDRESS, messages.SSDP_PORT))
        self.assertLessEqual(SEARCH_WINDOW, 2.0)  # what "promptly" means here
        clock.advance(SEARCH_WINDOW - 0.01)
        self.assertEqual(service.udp.transport.written, [])  # still waiting for an IGD
        clock.advance(0.01)
        self.assertTrue(any(host == SERVER for _, (host, _port) in service.udp.transport.written))
        self.assertEqual(service.counters["upnp.error.no-igd"], 1)
        self.assertFalse(service.status()["upnp"]["mapped"])
        service.stopService()
        clock.advance(0)


class NoIGDLogTests(unittest.TestCase):
    """A LAN without an IGD is the usual case: said once at info, then only counted."""

    timeout = 20

    @defer.inlineCallbacks
    def test_no_igd_is_said_once_and_other_failures_warn(self) -> None:
        igd = FakeIGD()
        target = igd.start()
        self.addCleanup(igd.stop)
        igd.answer_search = False
        events: list[dict[str, Any]] = []
        self.patch(upnp_client, "log", Logger(observer=events.append))
        mapper = PortMapper(IGDClient(reactor, ssdp_target=target, search_window=0.1), 3545, clock=task.Clock())
        for _ in range(3):
            yield mapper._map()
        self.assertEqual(mapper.counters["upnp.error.no-igd"], 3)
        self.assertEqual([event["log_level"] for event in events], [LogLevel.info])
        igd.answer_search = True
        igd.refuse["AddPortMapping"] = 718
        yield mapper._map()
        self.assertEqual([event["log_level"] for event in events], [LogLevel.info, LogLevel.warn])
