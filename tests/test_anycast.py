"""Anycast: the drain state, its grace, the route and addresses the roles own for a routing
daemon, health withdrawal, and drain through the appliance and before a stop."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Interface, IPv6Network
from typing import Any

from twisted.trial import unittest

from teredo_appliance.announcement import ANNOUNCED, DRAINED, DRAINING, WITHDRAWN, Announcement
from teredo_appliance.config import parse_config
from teredo_appliance.config_model import RelayConfig, ServerConfig
from teredo_appliance.native_health import Route
from teredo_appliance.netwatch import NLMSG_HEADER, RTM_DELROUTE, RTMSG
from teredo_appliance.roles.relay import NATIVE_RECHECK, RelayService
from teredo_appliance.roles.server import ServerService
from tests.fakes import FakeLink, InMemoryRelayHost, UDPReactor, memory_tun_system

PREFIX = IPv6Network("2001::/32")


def route_message(family: int) -> bytes:
    """An RTM_DELROUTE notification of `family` (rtmsg only, no attributes)."""
    body = RTMSG.pack(family, 64, 0, 0, 254, 3, 0, 1, 0)
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), RTM_DELROUTE, 0, 0, 0) + body


class AnnouncementTests(unittest.SynchronousTestCase):
    def test_drain_withdraws_at_once_and_is_drained_after_the_grace(self) -> None:
        state = Announcement()
        self.assertEqual((state.state(0.0), state.wanted), (ANNOUNCED, True))
        self.assertEqual(state.drain(10.0, 5.0), 15.0)
        self.assertEqual((state.state(10.0), state.wanted, state.grace_left(12.0)), (DRAINING, False, 3.0))
        self.assertEqual(state.state(15.0), DRAINED)
        state.undrain()
        self.assertEqual((state.state(16.0), state.wanted), (ANNOUNCED, True))

    def test_a_second_drain_never_extends_the_first(self) -> None:
        state = Announcement()
        state.drain(0.0, 60.0)  # an operator's long drain, then a stop with a short grace
        self.assertEqual(state.drain(1.0, 3.0), 4.0)
        self.assertEqual(state.drain(2.0, 60.0), 4.0)

    def test_a_health_problem_withdraws_until_it_is_gone(self) -> None:
        state = Announcement()
        state.problem = "TUN teredo-relay missing"
        self.assertEqual((state.state(0.0), state.wanted), (WITHDRAWN, False))
        state.problem = None
        self.assertTrue(state.wanted)
        state.drain(0.0, 1.0)
        state.problem = "TUN teredo-relay down"
        self.assertEqual(state.state(2.0), DRAINED)  # a drain is reported over a health problem


class RelayAnycastTests(InMemoryRelayHost, unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.set_up_host()
        self.make(RelayConfig(interface="trelay", bind_address=IPv4Address("198.18.0.10"),
                              route_protocol=201, route_metric=100))

    def make(self, config: RelayConfig) -> None:
        self.service = RelayService(config, reactor=self.reactor, tun_system=self.system, link_factory=self.link,
                                    link_watch=self.watch, error_source=lambda destination: b"\0" * 16)

    def anycast(self) -> dict[str, Any]:
        return self.service.status()["anycast"]

    def test_route_carries_the_configured_protocol_and_metric(self) -> None:
        self.start()
        self.assertIn(("add_route", PREFIX, 100, 201), self.calls)
        self.assertEqual(self.anycast(), {"state": ANNOUNCED, "announced": True, "grace_left": 0.0,
                                          "what": "route 2001::/32 proto 201 metric 100"})

    def test_drain_withdraws_the_route_serves_on_and_reports_drained_after_the_grace(self) -> None:
        self.start()
        self.calls.clear()
        d = self.service.drain(5.0)
        self.assertEqual(self.calls, [("remove_route", PREFIX, 100, 201)])
        self.assertNotIn(PREFIX, self.links[-1].routes)
        self.assertEqual((self.anycast()["state"], self.anycast()["announced"]), (DRAINING, False))
        self.assertNoResult(d)
        self.assertTrue(self.service.running)  # existing peers are still served
        self.reactor.advance(5.0)
        self.assertEqual(self.successResultOf(d)["state"], DRAINED)
        self.assertEqual(self.service.undrain()["state"], ANNOUNCED)
        self.assertEqual(self.calls[-1], ("add_route", PREFIX, 100, 201))
        self.assertIn(PREFIX, self.links[-1].routes)

    def test_a_drained_relay_is_not_re_announced_by_a_tun_repair(self) -> None:
        self.start()
        self.service.drain(0.0)
        self.calls.clear()
        self.links[-1].up_now = False  # ip link set trelay down
        self.watches[-1].on_change()
        self.assertEqual(self.service.status()["health"], "ok")  # repaired ...
        self.assertNotIn(PREFIX, self.links[-1].routes)  # ... and still withdrawn
        self.assertEqual(self.calls, [("up", 1280)])

    def test_a_broken_tun_withdraws_the_route_until_repaired(self) -> None:
        self.start()
        link = self.links[-1]
        link.addresses.clear()  # the device keeps its route, but not its link-local address
        self.failing.add("add_address")  # and the repair is refused for now
        self.watches[-1].on_change()
        self.assertNotIn(PREFIX, link.routes)
        self.assertEqual((self.anycast()["state"], self.anycast()["announced"]), (WITHDRAWN, False))
        self.failing.discard("add_address")
        self.reactor.advance(10.0)  # REPAIR_RETRY
        self.assertEqual(self.service.status()["health"], "ok")
        self.assertIn(PREFIX, link.routes)
        self.assertEqual(self.anycast()["state"], ANNOUNCED)

    def uplink_down(self) -> None:
        self.links[-1].host_routes = [Route(IPv6Network("fe80::/64"), 1000)]  # only link-local is left

    def test_a_lost_uplink_withdraws_the_route_until_a_route_is_back(self) -> None:
        self.start()
        self.uplink_down()
        self.watches[-1].on_change()  # the netlink notification of the deleted routes
        self.assertNotIn(PREFIX, self.links[-1].routes)
        self.assertEqual((self.anycast()["state"], self.anycast()["announced"]), (WITHDRAWN, False))
        self.assertEqual(self.service.status()["health"],
                         "degraded: no IPv6 route toward 2000::/3 except through trelay")
        self.links[-1].host_routes = [Route(IPv6Network("2001:db8:1::/64"), 1000)]
        self.watches[-1].on_change()
        self.assertEqual(self.service.status()["health"], "ok")
        self.assertIn(PREFIX, self.links[-1].routes)
        self.assertEqual(self.anycast()["state"], ANNOUNCED)

    def test_the_watch_wakes_on_any_ipv6_route_change(self) -> None:
        self.start()
        relevant = self.watches[-1].settings["relevant"]
        self.assertTrue(relevant(route_message(socket.AF_INET6)))
        self.assertFalse(relevant(route_message(socket.AF_INET)))

    def test_a_missed_notification_is_caught_by_the_periodic_recheck(self) -> None:
        self.start()
        self.uplink_down()
        self.reactor.advance(NATIVE_RECHECK)
        self.assertEqual(self.anycast()["state"], WITHDRAWN)
        self.assertNotIn(PREFIX, self.links[-1].routes)

    def test_a_relay_started_without_an_uplink_never_announces(self) -> None:
        self.host_routes = []
        self.start()
        self.assertNotIn(("add_route", PREFIX, 100, 201), self.calls)
        self.assertEqual(self.anycast()["state"], WITHDRAWN)

    def test_an_unreadable_routing_table_leaves_the_health_as_it_was(self) -> None:
        self.failing.add("ipv6_routes")
        self.start()
        self.reactor.advance(NATIVE_RECHECK)
        self.assertEqual(self.service.status()["health"], "ok")
        self.assertIn(PREFIX, self.links[-1].routes)

    def test_a_drained_relay_stays_withdrawn_when_its_uplink_comes_back(self) -> None:
        self.start()
        self.service.drain(0.0)
        self.uplink_down()
        self.watches[-1].on_change()
        self.links[-1].host_routes = [Route(IPv6Network("::/0"), 1000)]
        self.watches[-1].on_change()
        self.assertEqual(self.service.status()["health"], "ok")
        self.assertNotIn(PREFIX, self.links[-1].routes)
        self.assertEqual(self.anycast()["state"], DRAINED)

    def test_a_refused_announcement_is_the_relays_health_and_is_retried(self) -> None:
        self.start()
        self.service.drain(0.0)
        self.failing.add("add_route")
        self.service.undrain()
        self.assertIn("cannot announce route 2001::/32 proto 201 metric 100", self.service.status()["health"])
        self.failing.discard("add_route")
        self.reactor.advance(10.0)
        self.assertEqual((self.service.status()["health"], self.anycast()["state"]), ("ok", ANNOUNCED))


    def test_an_anycast_relay_puts_its_shared_address_on_the_tun_with_the_route(self) -> None:
        self.make(RelayConfig(interface="trelay", bind_address=IPv4Address("198.18.5.10"), anycast=True,
                              route_protocol=201, route_metric=100))
        self.start()
        shared = IPv4Interface("198.18.5.10/32")
        link = self.links[-1]
        self.assertIn(shared, link.addresses)
        self.assertIn(PREFIX, link.routes)
        self.assertIn("anycast 198.18.5.10/32 on trelay", self.anycast()["what"])
        self.service.drain(0.0)
        self.assertNotIn(shared, link.addresses)  # clients' packets go to the other boxes
        self.assertNotIn(PREFIX, link.routes)
        self.service.undrain()
        self.assertEqual(([shared in link.addresses], self.anycast()["state"]), ([True], ANNOUNCED))

    def test_a_unicast_relay_leaves_its_address_alone(self) -> None:
        self.start()
        self.assertFalse(any(isinstance(a, IPv4Interface) for a in self.links[-1].addresses))


class ServerAnycastTests(unittest.SynchronousTestCase):
    CONFIG = ServerConfig(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2"), anycast=True,
                          anycast_interface="tanycast")
    SLASH_32S = [IPv4Interface("198.18.0.1/32"), IPv4Interface("198.18.0.2/32")]

    def setUp(self) -> None:
        self.calls: list[tuple] = []
        self.failing: set[str] = set()
        self.clock = UDPReactor()
        self.system = memory_tun_system()
        self.links: list[FakeLink] = []

    def link(self, name: str) -> FakeLink:
        self.links.append(FakeLink(name, self.calls, self.failing))
        return self.links[-1]

    def make(self, config: ServerConfig = CONFIG) -> ServerService:
        return ServerService(config, self.clock, link_factory=self.link, tun_system=self.system)

    def start_anycast(self, service: ServerService) -> None:
        """What privilegedStartService does before binding (the UDP and raw sockets aside)."""
        service.anycast.open()
        self.assertIsNone(service.announcer.reconcile())

    def stop(self, service: ServerService) -> None:
        stopped = service.stopService()
        self.clock.advance(0)  # the TUN port closes on the next reactor turn
        self.successResultOf(stopped)

    def test_the_addresses_live_on_a_tun_of_the_servers_own_not_on_lo(self) -> None:
        # A kill -9 closes the TUN's descriptor, so the kernel deletes the device and the
        # addresses with it: the routing daemon stops announcing a box that no longer serves.
        service = self.make()
        self.start_anycast(service)
        self.assertEqual([link.ifname.startswith("tanycast") for link in self.links], [True])
        self.assertEqual(self.calls, [("prepare",), ("up", 1280), *(("add_address", a) for a in self.SLASH_32S)])
        self.assertEqual(len(self.system._openFiles), 1)
        self.assertIn("on tanycast", service.status()["anycast"]["what"])
        self.assertTrue(service.status()["anycast"]["announced"])

    def test_drain_removes_the_anycast_addresses_and_undrain_puts_them_back(self) -> None:
        service = self.make()
        self.start_anycast(service)
        del self.calls[:]
        d = service.drain(2.0)
        self.assertEqual(self.calls, [("remove_address", a) for a in self.SLASH_32S])
        self.assertEqual(self.links[0].addresses, set())
        self.assertFalse(service.status()["anycast"]["announced"])
        self.clock.advance(2.0)
        self.assertEqual(self.successResultOf(d)["state"], DRAINED)
        self.assertEqual(service.undrain()["state"], ANNOUNCED)
        self.assertEqual(self.links[0].addresses, set(self.SLASH_32S))

    def test_stop_removes_the_addresses_and_the_device(self) -> None:
        service = self.make()
        self.start_anycast(service)
        self.stop(service)
        self.assertEqual(self.links[0].addresses, set())
        self.assertEqual(self.system._openFiles, {})  # the device is gone
        self.assertFalse(service.status()["anycast"]["announced"])

    def test_a_failed_removal_is_reported_as_still_announced_and_closing_the_device_ends_it(self) -> None:
        # After `twistd -u` netlink may refuse: the status must not claim a withdrawal.
        service = self.make()
        self.start_anycast(service)
        self.failing.add("remove_address")
        service.drain(1.0)
        self.assertTrue(service.anycast.installed)
        self.stop(service)
        self.assertEqual(self.system._openFiles, {})

    def test_undrain_of_a_stopped_server_is_a_problem_not_a_crash(self) -> None:
        service = self.make()
        self.assertIn("the server is stopped", service.announcer.reconcile() or "")

    def test_a_packet_the_kernel_hands_the_anycast_tun_is_a_counted_drop(self) -> None:
        service = self.make()
        self.start_anycast(service)
        [tunnel] = self.system._openFiles.values()
        tunnel.readBuffer.append(b"\x60" + bytes(39))
        service.anycast.tunnel._port.doRead()  # what the reactor does when the device is readable
        self.assertEqual(service.counters.drops(), {"anycast.tun_packet": 1})

    def test_without_anycast_no_device_is_created(self) -> None:
        service = self.make(ServerConfig(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")))
        self.assertEqual(self.successResultOf(service.drain(5.0))["state"], "not anycast")
        self.assertNotIn("anycast", service.status())
        self.stop(service)
        self.assertEqual((self.calls, self.system._openFiles), ([], {}))


class ConfigTests(unittest.SynchronousTestCase):
    def test_keys_are_read_and_bad_values_named_with_file_and_line(self) -> None:
        config = parse_config("roles:\n  relay:\n    bind_port: 3545\n    route_protocol: 201\n"
                              "    route_metric: 10\n    drain_grace: 0.5\n"
                              "  server:\n    bind_address: 198.18.0.1\n    anycast: true\n", "t.yaml")
        self.assertEqual((config.roles.relay.route_protocol, config.roles.relay.route_metric,
                          config.roles.relay.drain_grace, config.roles.server.anycast), (201, 10, 0.5, True))
        from teredo_appliance.config import ConfigError

        with self.assertRaises(ConfigError) as caught:
            parse_config("roles:\n  relay:\n    bind_port: 3545\n    route_protocol: 2\n    drain_grace: 61\n"
                         "  server:\n    bind_address: 198.18.0.1\n    anycast: maybe\n", "t.yaml")
        errors = caught.exception.errors
        self.assertIn("t.yaml:4: roles.relay.route_protocol: 2 is out of range 3..255", errors)
        self.assertIn("t.yaml:5: roles.relay.drain_grace: 61 is out of range 0..60 seconds", errors)
        self.assertTrue(any(e.startswith("t.yaml:8: roles.server.anycast:") for e in errors), errors)

    def test_the_anycast_tun_is_a_valid_name_of_its_own(self) -> None:
        from teredo_appliance.config import ConfigError
        head = "roles:\n  server:\n    bind_address: 198.18.0.1\n    anycast: true\n"
        config = parse_config(head + "    anycast_interface: tany0\n", "t.yaml")
        self.assertEqual(config.roles.server.anycast_interface, "tany0")
        with self.assertRaises(ConfigError) as caught:
            parse_config(head + "    anycast_interface: sixteen-bytes-xx\n", "t.yaml")
        self.assertTrue(caught.exception.errors[0].startswith("t.yaml:5: roles.server.anycast_interface:"),
                        caught.exception.errors)
        with self.assertRaises(ConfigError) as caught:
            parse_config(head + "  client:\n    server_address: 198.18.0.9\n    interface: teredo-anycast\n", "t.yaml")
        self.assertEqual(caught.exception.errors, [
            "t.yaml:7: roles.client.interface: 'teredo-anycast' is also roles.server.anycast_interface;"
            " each role needs its own TUN device"])

    def test_an_anycast_relay_needs_a_specific_address(self) -> None:
        from teredo_appliance.config import ConfigError

        with self.assertRaises(ConfigError) as caught:
            parse_config("roles:\n  relay:\n    anycast: true\n", "t.yaml")
        self.assertEqual(caught.exception.errors, ["t.yaml:3: roles.relay.anycast: an anycast relay needs a "
                                                   "specific bind_address (the address the boxes share)"])
        config = parse_config("roles:\n  relay:\n    bind_address: 198.18.5.10\n    anycast: true\n", "t.yaml")
        self.assertTrue(config.roles.relay.anycast)


class ApplianceDrainTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        from teredo_appliance.appliance import Appliance
        from teredo_appliance.config_model import Config, RolesConfig

        relay = RelayAnycastTests("test_route_carries_the_configured_protocol_and_metric")
        relay.setUp()
        self.relay = relay
        config = Config(RolesConfig(relay=RelayConfig(interface="trelay", drain_grace=3.0)))
        self.appliance = Appliance("teredo.yaml", config, relay.reactor, {"relay": self.build})

    def build(self, section: RelayConfig, reactor: Any) -> RelayService:
        self.relay.make(section)
        return self.relay.service

    def test_stop_withdraws_first_and_stops_only_after_the_drain_grace(self) -> None:
        service = self.relay.service
        self.appliance.privilegedStartService()
        self.appliance.startService()
        stopped = self.appliance.stopService()
        self.assertNotIn(PREFIX, self.relay.links[-1].routes)  # withdrawn at once ...
        self.assertTrue(service.running)  # ... while still serving
        self.relay.reactor.advance(2.9)
        self.assertTrue(service.running)
        self.relay.reactor.advance(0.1)
        self.assertFalse(service.running)
        self.relay.reactor.advance(0)  # the TUN closes
        self.successResultOf(stopped)

    def test_drain_and_undrain_by_role_name(self) -> None:
        self.appliance.privilegedStartService()
        self.appliance.startService()
        d = self.appliance.drain("relay", 1.0)
        self.relay.reactor.advance(1.0)
        self.assertEqual(self.successResultOf(d)["state"], DRAINED)
        self.assertEqual(self.appliance.status()["relay"]["anycast"]["state"], DRAINED)
        self.assertEqual(self.appliance.undrain("relay")["state"], ANNOUNCED)
        self.assertRaises(LookupError, self.appliance.drain, "client")
        self.assertRaises(LookupError, self.appliance.drain, "server")  # not running
