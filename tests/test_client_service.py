"""roles/client.py: the service in memory (fake TUN system, netlink, UDP and clock)."""

from __future__ import annotations

import dataclasses
import random
from ipaddress import IPv4Address, IPv6Address, IPv6Interface, IPv6Network
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import fail, succeed
from twisted.pair import testing
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.clock import monotonic_reactor
from teredo_appliance.config_model import ClientConfig, ClientExtensions
from teredo_appliance.console import render_status
from teredo_appliance.roles.client import DEFAULT_ROUTE_METRIC, ClientService
from teredo_appliance.roles.client_machine import QUALIFICATION_TIMEOUT
from teredo_appliance.wire.address import ipv4_to_int
from teredo_appliance.wire.ipv6 import build_packet, parse_header
from teredo_appliance.wire.nd import RS_SOURCE, router_advertisement, teredo_prefix64
from teredo_appliance.wire.teredo import AuthIndicator, origin_indication, parse_datagram
from tests.fakes import FakeLanEdge, FakeLink, QuietWatch, UDPReactor, kernel_sends, memory_tun_system, tun_device

SERVER, SERVER2 = "198.18.0.1", "198.18.0.2"
MAPPED = ("198.18.0.100", 52732)
LOCAL = "198.19.0.2"
LINK_LOCAL = IPv6Interface("fe80::ffff:ffff:ffff/64")
DEFAULT = IPv6Network("::/0")
V6HOST = IPv6Address("2001:db8:1::2").packed


class Reactor(UDPReactor):
    """A clock that also binds UDP, resolves names and 'spawns' hooks, all in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[str, dict[str, str]]] = []
        self.names: dict[str, str] = {}

    def resolve(self, name: str, timeout: Any = None) -> Any:
        return succeed(self.names[name]) if name in self.names else fail(OSError("no such name"))

    def spawnProcess(self, protocol: Any, executable: str, args: Any, env: dict[str, str], path: str) -> Any:
        self.spawned.append((executable, env))
        from twisted.internet.error import ProcessDone
        from twisted.python.failure import Failure

        self.callLater(0, protocol.processEnded, Failure(ProcessDone(0)))
        return object()


class ClientServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.system = memory_tun_system()
        self.reactor = Reactor()
        self.calls: list[tuple] = []
        self.watchers: list[QuietWatch] = []  # the uplink watch
        self.links: list[FakeLink] = []

    def service(self, **settings: Any) -> ClientService:
        # Local discovery off unless asked: its multicast bubble would join every list of sends;
        # UPnP off: its search would hold qualification for the SSDP window (tests.test_client_upnp).
        config = ClientConfig(**{"server_address": SERVER, "interface": "tclient", "local_discovery": False,
                                 "extensions": ClientExtensions(upnp=False), **settings})

        def watch(on_change: Any, reactor: Any) -> QuietWatch:
            self.watchers.append(QuietWatch(on_change, reactor))
            return self.watchers[-1]

        service = ClientService(
            config, self.reactor, tun_system=self.system, link_factory=self.link,
            netwatch=watch, link_watch=QuietWatch, local_address=lambda server: ipv4_to_int(LOCAL),
            rng=random.Random(1),
            lan_edge=FakeLanEdge,
        )
        service.privilegedStartService()
        service.startService()
        return service

    def link(self, name: str) -> FakeLink:
        self.links.append(FakeLink(name, self.calls))
        return self.links[-1]

    def sent(self, service: ClientService) -> list[tuple[bytes, tuple[str, int]]]:
        written = service.udp.transport.written  # type: ignore[union-attr]
        out, written[:] = list(written), []
        return out

    def answer_rs(self, service: ClientService, mapped: tuple[str, int] = MAPPED) -> None:
        """Answer every plain RS sent so far, as a restricted NAT lets through."""
        for payload, (host, _port) in self.sent(service):
            d = parse_datagram(payload)
            if d.auth is None or d.header.source != RS_SOURCE:
                continue
            ra = (AuthIndicator(d.auth.nonce).pack() + origin_indication(ipv4_to_int(mapped[0]), mapped[1])
                  + router_advertisement(ipv4_to_int(SERVER), RS_SOURCE, teredo_prefix64(ipv4_to_int(SERVER)), 1280))
            service.udp.datagramReceived(ra, (host, 3544))

    def qualify(self, service: ClientService) -> None:
        self.answer_rs(service)  # primary: sends the secondary probe
        self.answer_rs(service)  # secondary: same mapping

    def device(self) -> testing.Tunnel:
        return tun_device(self.system)

    def test_start_binds_opens_and_solicits(self) -> None:
        service = self.service(bind_address=IPv4Address("198.19.0.2"), bind_port=3545, mtu=1400)
        self.assertEqual(self.reactor.udp_ports[0][0:3:2], (3545, "198.19.0.2"))
        self.assertEqual(self.device().requestedName.rstrip(b"\0"), b"tclient")
        self.assertEqual(self.calls, [("prepare",), ("up", 1400)])
        self.assertEqual({to for _, to in self.sent(service)}, {(SERVER, 3544)})
        self.assertEqual(service.status()["state"], "probe")
        self.assertEqual(self.watchers[0].started, 1)

    def test_qualified_tun_gets_miredos_addresses_and_route(self) -> None:
        service = self.service()
        self.calls.clear()
        self.qualify(service)
        status = service.status()
        address = IPv6Interface((status["address"], 32))
        self.assertEqual(
            self.calls,
            [("add_address", LINK_LOCAL), ("add_address", address), ("add_route", DEFAULT, DEFAULT_ROUTE_METRIC)],
        )
        self.assertEqual(status["state"], "qualified")
        self.assertEqual(status["nat_type"], "restricted")
        self.assertEqual(status["mapped"], "198.18.0.100:52732")
        self.assertEqual(status["local"], f"{LOCAL}:40000")
        self.assertEqual(status["server"], SERVER)
        self.assertIsNotNone(status["last_qualified"])

    def test_status_reports_the_tuns_kernel_drops(self) -> None:
        service = self.service()
        self.assertEqual(service.status()["tun_kernel_drops"], {"tx_dropped": 0, "rx_dropped": 0})

    def test_a_wall_clock_step_neither_delays_the_refresh_nor_makes_ages_negative(self) -> None:
        monotonic = [100.0]
        monotonic_reactor(self.reactor, lambda: monotonic[0])  # as twistd teredo does

        def elapse(seconds: float) -> None:
            monotonic[0] += seconds
            self.reactor.advance(seconds)

        service = self.service()
        self.qualify(service)
        self.sent(service)
        elapse(10)
        self.reactor.rightNow -= 600  # the wall clock (the reactor's own) steps back
        self.assertEqual(service.status()["last_qualified"], "10 s ago")
        self.assertEqual(service.status()["uptime"], 10.0)
        elapse(20.5)
        self.assertEqual([to for _payload, to in self.sent(service)], [(SERVER, 3544)])  # the refresh, on time

    def test_tun_recreated_from_outside_gets_its_address_and_default_route_back(self) -> None:
        service = self.service()
        self.qualify(service)
        address = IPv6Interface((service.status()["address"], 32))
        self.links[-1].gone = True  # ip link del
        service.link_watch.on_change()
        self.assertTrue(service.status()["health"].startswith("degraded: TUN "))
        self.calls.clear()
        self.reactor.advance(0)
        self.assertEqual(self.calls, [("prepare",), ("up", 1280), ("add_address", LINK_LOCAL),
                                      ("add_address", address), ("add_route", DEFAULT, DEFAULT_ROUTE_METRIC)])
        status = service.status()
        self.assertEqual((status["health"], status["state"]), ("ok", "qualified"))

    def test_lost_connectivity_removes_route_and_addresses(self) -> None:
        service = self.service()
        self.qualify(service)
        address = IPv6Interface((service.status()["address"], 32))
        self.calls.clear()
        self.reactor.advance(30)
        self.reactor.pump([QUALIFICATION_TIMEOUT + 0.1] * 3)
        self.assertEqual(
            self.calls,
            [("remove_route", DEFAULT, DEFAULT_ROUTE_METRIC), ("remove_address", LINK_LOCAL),
             ("remove_address", address)],
        )
        self.assertEqual(service.status()["state"], "offline")

    def test_malformed_datagrams_from_the_server_do_not_postpone_the_refresh(self) -> None:
        service = self.service()
        self.qualify(service)
        self.sent(service)
        for second in range(1, 30):
            self.reactor.advance(1)
            service.udp.datagramReceived(b"\x00\x01" + bytes(second), (SERVER, 3544))  # a bad RA
            service.udp.datagramReceived(b"\x60" + bytes(39), (SERVER, 3544))  # a truncated packet
        self.reactor.advance(1.5)
        self.assertEqual([to for _payload, to in self.sent(service)], [(SERVER, 3544)])  # the refresh RS

    def test_new_mapping_replaces_the_address(self) -> None:
        service = self.service()
        self.qualify(service)
        old = IPv6Interface((service.status()["address"], 32))
        self.calls.clear()
        self.reactor.advance(30)
        self.answer_rs(service, ("198.18.0.100", 40000))
        new = IPv6Interface((service.status()["address"], 32))
        self.assertNotEqual(old, new)
        self.assertEqual(self.calls, [("remove_address", old), ("add_address", new)])

    def test_stop_closes_everything(self) -> None:
        service = self.service()
        self.qualify(service)
        d = service.stopService()
        self.reactor.advance(0)  # TuntapPort closes on the next turn
        self.successResultOf(d)
        self.assertIn(("remove_route", DEFAULT, DEFAULT_ROUTE_METRIC), self.calls)
        self.assertEqual(self.system._openFiles, {})
        self.assertEqual(self.watchers[0].stopped, 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_packets_flow_between_tun_and_udp(self) -> None:
        service = self.service()
        self.qualify(service)
        me = IPv6Address(service.status()["address"]).packed
        packet = build_packet(me, V6HOST, 17, b"x" * 20)
        kernel_sends(self.system, self.reactor, packet)
        [(echo, to)] = self.sent(service)
        self.assertEqual((to, parse_header(echo).destination), ((SERVER, 3544), V6HOST))
        self.assertEqual(service.peers()[0]["address"], "2001:db8:1::2")

    def test_network_change_requalifies(self) -> None:
        service = self.service()
        self.qualify(service)
        self.watchers[0].on_change()
        self.assertEqual([to for _, to in self.sent(service)], [(SERVER, 3544)] * 2)
        self.assertEqual(service.counters["client.network_change"], 1)

    def test_names_resolve_through_the_reactor(self) -> None:
        self.reactor.names["teredo.test"] = SERVER
        service = self.service(server_address="teredo.test")
        self.assertEqual({to for _, to in self.sent(service)}, {(SERVER, 3544)})

    def test_unresolvable_name_goes_offline(self) -> None:
        service = self.service(server_address="nowhere.test")
        self.assertEqual(service.status()["state"], "offline")
        self.assertEqual(service.counters["client.resolve_failed"], 1)

    def test_hook_runs_up_down_destroy_with_miredo_variables(self) -> None:
        service = self.service(hook="/etc/teredo/client-hook")
        self.qualify(service)
        self.reactor.advance(0)
        address = service.status()["address"]
        self.reactor.advance(30)
        self.reactor.pump([QUALIFICATION_TIMEOUT + 0.1] * 3)
        d = service.stopService()
        self.reactor.pump([0] * 3)
        self.successResultOf(d)
        states = [env["STATE"] for _, env in self.reactor.spawned]
        self.assertEqual(states, ["up", "down", "destroy"])
        up, down, _ = (env for _, env in self.reactor.spawned)
        self.assertEqual(
            {k: up[k] for k in ("IFACE", "ADDRESS", "LLADDRESS", "MTU")},
            {"IFACE": service.tunnel.name, "ADDRESS": address, "LLADDRESS": "fe80::ffff:ffff:ffff", "MTU": "1280"},
        )
        self.assertNotIn("ADDRESS", down)
        self.assertEqual(down["OLD_ADDRESS"], address)
        self.assertEqual({path for path, _ in self.reactor.spawned}, {"/etc/teredo/client-hook"})

    def test_reconfigure_in_place_keeps_the_tunnel_and_the_qualification(self) -> None:
        """refresh_interval, fallback_servers and hook change live: same TUN, same address, and
        the next change of state runs the new hook."""
        service = self.service(hook="/etc/teredo/old-hook")
        self.qualify(service)
        self.reactor.advance(0)
        tunnel, address, calls = service.tunnel, service.status()["address"], list(self.calls)
        new = dataclasses.replace(service.config, refresh_interval=10.0, fallback_servers=(SERVER2,),
                                  hook="/etc/teredo/new-hook")
        self.assertTrue(service.reconfigurable(new))
        service.reconfigure(new)
        self.assertIs(service.tunnel, tunnel)
        self.assertEqual((service.status()["address"], service.status()["refresh_interval"]), (address, 10.0))
        self.assertEqual(self.calls, calls)  # the TUN was not touched
        self.sent(service)
        self.reactor.advance(10)  # the new interval, not the old 30 s
        self.assertEqual({to for _, to in self.sent(service)}, {(SERVER, 3544)})
        d = service.stopService()
        self.reactor.pump([0] * 3)
        self.successResultOf(d)
        self.assertEqual([(path, env["STATE"]) for path, env in self.reactor.spawned],
                         [("/etc/teredo/old-hook", "up"), ("/etc/teredo/new-hook", "down"),
                          ("/etc/teredo/new-hook", "destroy")])

    def test_a_hook_removed_live_runs_no_more(self) -> None:
        service = self.service(hook="/etc/teredo/old-hook")
        self.qualify(service)
        service.reconfigure(dataclasses.replace(service.config, hook=None))
        d = service.stopService()
        self.reactor.pump([0] * 3)
        self.successResultOf(d)
        self.assertEqual([env["STATE"] for _, env in self.reactor.spawned], ["up"])

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=160), st.sampled_from([(SERVER, 3544), (SERVER2, 3544), ("198.18.0.10", 3544)]))
    def test_arbitrary_datagrams_never_raise(self, payload: bytes, source: tuple[str, int]) -> None:
        service = self.__dict__.get("_fuzzed")
        if service is None:
            service = self._fuzzed = self.service()
            self.qualify(service)
        for data in (payload, b"\x00\x01" + payload, b"\x00\x00" + payload):
            service._on_datagram(data, source)
        self.assertEqual(service.counters["drop.internal-error"], 0)

    def test_local_discovery_joins_the_lan_announces_and_reports_local_peers(self) -> None:
        service = self.service(local_discovery=True)
        lan = service.lan
        assert isinstance(lan, FakeLanEdge)
        self.qualify(service)
        self.assertEqual(lan.joined, LOCAL)
        mine = IPv6Address(service.status()["address"]).packed
        self.assertIn(("224.0.0.253", 3544), [to for _, to in self.sent(service)])
        peer = bytearray(mine)
        peer[10:12] = b"\x01\x02"  # another (obfuscated) port behind the same NAT
        bubble = build_packet(bytes(peer), IPv6Address("ff02::1").packed, 59, b"", hop_limit=1)
        lan.deliver(bubble, ("198.20.0.3", 40002))  # not on the LAN's subnet
        self.assertEqual(service.counters.drops(), {"local-discovery-off-link": 1})
        lan.deliver(bubble, ("198.19.0.3", 40002))
        self.assertEqual([to for _, to in self.sent(service)], [("198.19.0.3", 40002)])
        status = service.status()
        self.assertEqual([p["local"] for p in status["local_peers"]], [["198.19.0.3:40002"]])
        self.assertEqual((status["local_discovery"], status["hairpinning"], status["hairpinning_used"]),
                         (True, True, False))
        # netsh-style, in `teredoctl status`: the special behaviour on one line, the peer counted.
        self.assertEqual(status["nat_special"]["local_peers"], 1)
        self.assertIn("NAT Special Behaviour    : UPnP: no, PortPreserving: ", render_status({"client": status}))
        self.assertTrue(status["nat_special_behaviour"].endswith(
            "Hairpinning used: no, Local peers: 1, Indirect bubbles saved: 0"))
        self.assertEqual((status["nat_special"]["indirect_bubbles_saved"], status["peers"]["indirect_bubbles_saved"]),
                         (0, 0))
        service.stopService()
        self.assertTrue(lan.stopped)
