"""The Prometheus collector over a real relay service (in-memory TUN and UDP), read back with
prometheus_client's own parser; and the HTTP endpoint on loopback."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import Service
from twisted.internet import reactor as real_reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from teredo_appliance.appliance import Appliance
from teredo_appliance.config_model import ClientConfig, Config, MetricsConfig, RelayConfig, RolesConfig, ServerConfig
from teredo_appliance.metrics import MetricsService, make_registry
from teredo_appliance.roles.relay import RelayService
from teredo_appliance.stats import Counters
from teredo_appliance.wire.address import TeredoAddress, ipv4_to_int
from teredo_appliance.wire.teredo import build_bubble
from tests.fakes import FakeLink, UDPReactor, memory_tun_system

SERVER = ServerConfig(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2"))
RELAY = RelayConfig(interface="trelay", bind_address=IPv4Address("198.18.0.10"))
PEER_MAPPING = ("198.18.0.100", 52732)
PEER = TeredoAddress(ipv4_to_int("198.18.0.1"), 0, PEER_MAPPING[1], ipv4_to_int(PEER_MAPPING[0])).pack()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from the exposition text."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class StoppedServer(Service):
    """A configured role that is not running (as after a failed restart)."""

    def __init__(self, section: Any, reactor: Any = None) -> None:
        self.counters = Counters()

    def peer_count(self) -> int:
        return 0


class CollectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = UDPReactor()
        calls: list[tuple] = []

        def relay(section: RelayConfig, reactor: Any = None) -> RelayService:
            return RelayService(section, reactor=self.reactor, tun_system=memory_tun_system(),
                                link_factory=lambda name: FakeLink(name, calls),
                                error_source=lambda destination: b"\0" * 16)

        config = Config(roles=RolesConfig(server=SERVER, relay=RELAY))
        self.appliance = Appliance("teredo.yaml", config, reactor=self.reactor,
                                   role_factories={"relay": relay, "server": StoppedServer})
        self.relay = self.appliance.getServiceNamed("relay")
        self.relay.privilegedStartService()
        self.relay.startService()
        self.addCleanup(self.relay.stopService)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples(generate_latest(make_registry(self.appliance)).decode())

    def test_families_and_values_follow_the_roles_counters(self) -> None:
        bubble = build_bubble(PEER, bytes.fromhex("fe80000000000000000000000000ffff"))
        self.relay.udp.datagramReceived(bubble, PEER_MAPPING)
        for junk in (b"", b"\x00", b"junk" * 10):
            self.relay.udp.datagramReceived(junk, ("169.254.1.1", 9))
        found = self.scrape()
        self.assertEqual(found[("teredo_up", (("role", "relay"),))], 1.0)
        self.assertEqual(found[("teredo_up", (("role", "server"),))], 0.0)  # configured, not running
        self.assertEqual(found[("teredo_peers", (("role", "relay"),))], 1.0)
        self.assertEqual(found[("teredo_bytes_total", (("direction", "udp_in"), ("role", "relay")))],
                         len(bubble) + 41)
        drops = {labels: value for (name, labels), value in found.items() if name == "teredo_drops_total"}
        self.assertEqual(sum(drops.values()), 3, drops)
        self.assertTrue(all(dict(labels)["role"] == "relay" for labels in drops))
        events = {dict(labels)["event"]: value for (name, labels), value in found.items()
                  if name == "teredo_events_total"}
        self.assertEqual(events, {k: float(v) for k, v in self.relay.counters.events().items()})
        self.assertEqual(found[("teredo_build_info", (("version", "0.1.0"),))], 1.0)
        self.assertNotIn("teredo_client_qualified", {name for name, _ in found})  # no client configured
        self.assertGreater(found[("process_resident_memory_bytes", ())], 0)

    def test_a_scrape_reads_live_counters_not_a_copy(self) -> None:
        before = self.scrape()[("teredo_peers", (("role", "relay"),))]
        self.relay.udp.datagramReceived(build_bubble(PEER, bytes(16)), PEER_MAPPING)
        self.assertEqual((before, self.scrape()[("teredo_peers", (("role", "relay"),))]), (0.0, 1.0))


class ClientQualifiedTests(SynchronousTestCase):
    def test_qualified_gauge_follows_the_client(self) -> None:
        class Client(StoppedServer):
            qualified = False

            def nat_report(self) -> dict[str, object]:
                return {"nat_type": "symmetric", "upnp": True, "port_preserving": False, "sequential": None}

        config = Config(roles=RolesConfig(client=ClientConfig(server_address="198.18.0.1")))
        appliance = Appliance("teredo.yaml", config, reactor=object(), role_factories={"client": Client})
        key = ("teredo_client_qualified", ())
        self.assertEqual(samples(generate_latest(make_registry(appliance)).decode())[key], 0.0)
        appliance.getServiceNamed("client").qualified = True
        found = samples(generate_latest(make_registry(appliance)).decode())
        self.assertEqual(found[key], 1.0)
        nat = (("nat_type", "symmetric"), ("port_preserving", "no"), ("sequential", "unknown"), ("upnp", "yes"))
        self.assertEqual(found[("teredo_client_nat_info", nat)], 1.0)


class EndpointTests(TestCase):
    """GET /metrics over real TCP on loopback."""

    def test_http_scrape(self) -> None:
        config = Config(roles=RolesConfig(server=SERVER))
        appliance = Appliance("teredo.yaml", config, reactor=real_reactor, role_factories={"server": StoppedServer})
        service = MetricsService(MetricsConfig("tcp:0:interface=127.0.0.1"), appliance, reactor=real_reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        url = f"http://{service.address()}/metrics".encode()
        d = Agent(real_reactor).request(b"GET", url)

        def got(response: Any) -> Any:
            self.assertEqual(response.code, 200)
            self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
            return readBody(response)

        def parsed(body: bytes) -> None:
            self.assertEqual(samples(body.decode())[("teredo_up", (("role", "server"),))], 0.0)

        return d.addCallback(got).addCallback(parsed)
