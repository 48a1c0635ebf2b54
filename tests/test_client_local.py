"""roles/client_local.py: local discovery (RFC 4380 §5.2.8) and hairpinning (RFC 6081),
alone and with the data path of two clients behind one NAT on a simulated LAN."""

from __future__ import annotations

import random
from ipaddress import IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.roles.client_datapath import ClientPeers
from teredo_appliance.roles.client_local import (
    DISCOVERY_ACCEPT_PER_SECOND,
    DISCOVERY_INTERVAL,
    DISCOVERY_PORT,
    LOCAL_PEER_LIFETIME,
    LocalPeers,
)
from teredo_appliance.stats import Counters
from teredo_appliance.wire.address import TeredoAddress, ipv4_to_int
from teredo_appliance.wire.constants import ALL_NODES, DISCOVERY_ADDRESS
from teredo_appliance.wire.ipv6 import NEXT_HEADER_NONE, build_packet, parse_header
from teredo_appliance.wire.teredo import build_bubble, origin_indication, parse_datagram
from teredo_appliance.wire.trailers import AlternateAddressTrailer, parse_trailers

SERVER = ("198.18.0.1", 3544)
WAN = "198.18.0.100"  # the NAT both clients are behind
LAN = {"a": ("198.19.0.2", 40001), "b": ("198.19.0.3", 40002)}
MAPPED = {"a": (WAN, 50001), "b": (WAN, 50002)}
ADDRESS = {
    name: TeredoAddress(ipv4_to_int(SERVER[0]), 0x0400, port, ipv4_to_int(ip)).pack()
    for name, (ip, port) in MAPPED.items()
}
ELSEWHERE = TeredoAddress(ipv4_to_int(SERVER[0]), 0x0400, 50003, ipv4_to_int("198.18.0.200")).pack()  # other NAT
MULTICAST = (DISCOVERY_ADDRESS, DISCOVERY_PORT)


def on_lan(ip: int) -> bool:
    return ip >> 8 == ipv4_to_int("198.19.0.0") >> 8


def discovery_bubble(source: bytes, hop_limit: int = 1) -> bytes:
    return build_packet(source, ALL_NODES, NEXT_HEADER_NONE, b"", hop_limit=hop_limit)


class One:
    """One LocalPeers, qualified as client a, recording what it sends."""

    def __init__(self, **options: bool) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.counters = Counters()
        self.local = LocalPeers(lambda p, a: self.sent.append((p, a)), self.counters, on_link=on_lan,
                                rng=random.Random(4380), **options)
        self.local.attach(ADDRESS["a"], LAN["a"], 100.0)


class DiscoveryTests(SynchronousTestCase):
    def test_qualifying_announces_us_on_the_lan_then_every_200_to_300_s(self) -> None:
        one = One()
        [(bubble, to)] = one.sent
        self.assertEqual(to, MULTICAST)
        header = parse_header(bubble)
        self.assertEqual((header.source, header.destination), (ADDRESS["a"], ALL_NODES))
        self.assertEqual((header.hop_limit, header.next_header, header.payload_length), (1, NEXT_HEADER_NONE, 0))
        self.assertEqual(len(bubble), 40)  # RFC 6081: no trailer in a discovery bubble
        due = one.local.next_deadline()
        assert due is not None
        self.assertTrue(100.0 + DISCOVERY_INTERVAL[0] <= due <= 100.0 + DISCOVERY_INTERVAL[1])
        one.local.on_timer(due - 0.01)
        self.assertEqual(len(one.sent), 1)
        one.local.on_timer(due)
        self.assertEqual([to for _, to in one.sent], [MULTICAST] * 2)

    def test_off_means_no_multicast_and_nothing_accepted(self) -> None:
        one = One(discovery=False)
        self.assertEqual(one.sent, [])
        one.local.from_discovery(discovery_bubble(ADDRESS["b"]), *LAN["b"], 101.0)
        self.assertEqual(one.local.peers, {})
        self.assertEqual(one.counters.drops(), {"local-discovery-offline": 1})

    def test_an_on_link_peer_behind_our_nat_is_learned_and_answered_with_our_trailer(self) -> None:
        one = One()
        one.sent.clear()
        one.local.from_discovery(discovery_bubble(ADDRESS["b"]), *LAN["b"], 101.0)
        [(reply, to)] = one.sent
        self.assertEqual(to, LAN["b"])
        datagram = parse_datagram(reply)
        self.assertEqual((datagram.header.source, datagram.header.destination), (ADDRESS["a"], ADDRESS["b"]))
        self.assertEqual(parse_trailers(datagram.trailer),
                         [AlternateAddressTrailer(((ipv4_to_int(LAN["a"][0]), LAN["a"][1]),))])
        [peer] = one.local.status(101.0)["local_peers"]
        self.assertEqual(peer["address"], str(IPv6Address(ADDRESS["b"])))
        self.assertEqual(peer["local"], ["198.19.0.3:40002"])
        self.assertEqual(peer["learned_by"], "discovery")

    def test_what_the_rfc_says_to_discard_is_discarded_and_counted(self) -> None:
        one = One()
        one.sent.clear()
        cases = {
            "local-discovery-off-link": (discovery_bubble(ADDRESS["b"]), ("198.20.0.3", 40002)),
            "local-discovery-other-nat": (discovery_bubble(ELSEWHERE), LAN["b"]),
            "local-discovery-source": (discovery_bubble(ADDRESS["a"]), LAN["b"]),  # our own, looped back
            "local-discovery-not-bubble": (build_packet(ADDRESS["b"], ALL_NODES, 17, b"x"), LAN["b"]),
        }
        for n, (payload, source) in enumerate(cases.values()):
            one.local.from_discovery(payload, *source, 101.0 + n)
        one.local.from_discovery(build_packet(IPv6Address("2001:db8::1").packed, ALL_NODES, 59, b""), *LAN["b"], 110)
        one.local.from_discovery(origin_indication(1, 2) + discovery_bubble(ADDRESS["b"]), *LAN["b"], 111.0)
        self.assertEqual(one.sent, [])
        self.assertEqual(one.local.peers, {})
        expected = dict.fromkeys(cases, 1)
        expected["local-discovery-source"] += 1
        expected["local-discovery-not-bubble"] += 1
        self.assertEqual(one.counters.drops(), expected)

    def test_acceptance_is_rate_limited_and_answers_are_paced(self) -> None:
        one = One()
        one.sent.clear()
        for n in range(50):
            one.local.from_discovery(discovery_bubble(ADDRESS["b"]), *LAN["b"], 101.0 + n / 100)
        self.assertEqual(one.counters["client.local_discovery_in"], DISCOVERY_ACCEPT_PER_SECOND)
        self.assertEqual(one.counters.drops(), {"local-discovery-rate": 50 - DISCOVERY_ACCEPT_PER_SECOND})
        self.assertEqual(len(one.sent), 1)  # RFC 4380 §5.2.6: 2 s between bubbles to one peer

    def test_memory_is_bounded_and_old_peers_expire(self) -> None:
        one = One()
        for n in range(200):
            source = TeredoAddress(ipv4_to_int(SERVER[0]), 0x0400, 1000 + n, ipv4_to_int(WAN)).pack()
            one.local.from_discovery(discovery_bubble(source), "198.19.0.9", 1000 + n, 101.0 + n)
        self.assertEqual(len(one.local.peers), 64)
        self.assertEqual(one.counters["client.local_evicted"], 200 - 64)
        one.local.on_timer(101.0 + 199 + LOCAL_PEER_LIFETIME)
        self.assertEqual(len(one.local.peers), 0)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=120), st.binary(max_size=40))
    def test_arbitrary_input_never_raises(self, payload: bytes, trailer: bytes) -> None:
        one = One()
        one.local.from_discovery(payload, *LAN["b"], 101.0)
        one.local.from_discovery(discovery_bubble(ADDRESS["b"]) + payload, *LAN["b"], 102.0)
        offered = one.local.alternates(trailer, ADDRESS["b"])
        if offered is not None:
            one.local.vouches(ADDRESS["b"], LAN["b"], offered, True, 103.0)
        one.local.status(104.0)


class Lan:
    """Clients a and b behind one NAT (WAN 198.18.0.100), their server, and the LAN between
    them: what one sends is delivered to the other in the order sent. The server relays
    bubbles with an origin indication (RFC 4380 §5.3.1); the NAT hairpins only if told."""

    def __init__(self, discovery: bool = True, hairpinning: bool = True, hairpin_nat: bool = False,
                 trailers_from_b: bool = True) -> None:
        self.now = 100.0
        self.hairpin_nat = hairpin_nat
        self.wire: list[tuple[str, bytes, tuple[str, int]]] = []  # (sender, payload, to)
        self.counters = {name: Counters() for name in LAN}
        self.tun: dict[str, list[bytes]] = {name: [] for name in LAN}
        self.local: dict[str, LocalPeers] = {}
        self.peers: dict[str, ClientPeers] = {}
        for name in LAN:
            def send(payload: bytes, to: tuple[str, int], name: str = name) -> None:
                self.wire.append((name, payload, to))

            hairpins = hairpinning and (name == "a" or trailers_from_b)
            self.local[name] = LocalPeers(send, self.counters[name], discovery=discovery, hairpinning=hairpins,
                                          on_link=on_lan, rng=random.Random(name))
            self.peers[name] = ClientPeers(send, self.tun[name].append, self.counters[name],
                                           rng=random.Random(6081), local=self.local[name])
            self.peers[name].attach(ADDRESS[name], ipv4_to_int(SERVER[0]))
        for name in LAN:  # a qualifies first: its announcement finds nobody yet
            self.local[name].attach(ADDRESS[name], LAN[name], self.now)
            self.carry()

    def carry(self) -> None:
        while self.wire:
            sender, payload, to = self.wire.pop(0)
            other = "b" if sender == "a" else "a"
            if to == MULTICAST:
                self.local[other].from_discovery(payload, *LAN[sender], self.now)
            elif to == SERVER:
                datagram = parse_datagram(payload)
                target = next((n for n in LAN if ADDRESS[n] == datagram.header.destination), None)
                if target is not None and datagram.header.payload_length == 0:
                    relayed = origin_indication(ipv4_to_int(WAN), MAPPED[sender][1]) + payload
                    self.peers[target].from_udp(relayed, *SERVER, self.now)
            elif to == LAN[other]:
                self.peers[other].from_udp(payload, *LAN[sender], self.now)
            elif to == MAPPED[other] and self.hairpin_nat:
                self.peers[other].from_udp(payload, *MAPPED[sender], self.now)

    def ping(self, sender: str) -> bool:
        """Send a packet from `sender` to the other; True once it reaches the other's TUN."""
        other = "b" if sender == "a" else "a"
        packet = build_packet(ADDRESS[sender], ADDRESS[other], 58, b"ping " + sender.encode())
        self.peers[sender].from_tun(packet, self.now)
        for _ in range(10):
            self.carry()
            if packet in self.tun[other]:
                return True
            self.now += 0.5
            for peers in self.peers.values():
                peers.on_timer(self.now)
        return False


class TwoClientsBehindOneNatTests(SynchronousTestCase):
    def test_plain_rfc_4380_cannot_reach_through_a_nat_that_does_not_hairpin(self) -> None:
        lan = Lan(discovery=False, hairpinning=False)
        self.assertFalse(lan.ping("a"))
        self.assertFalse(lan.ping("b"))

    def test_hairpinning_extension_alone_reaches_both_ways_over_the_lan(self) -> None:
        lan = Lan(discovery=False)
        self.assertTrue(lan.ping("a"))
        self.assertTrue(lan.ping("b"))
        for name in LAN:
            self.assertTrue(lan.local[name].hairpinning_used)
            other = LAN["b" if name == "a" else "a"]
            self.assertEqual(lan.peers[name].table.snapshot(lan.now)[0]["mapping"], f"{other[0]}:{other[1]}")

    def test_local_discovery_alone_reaches_both_ways_over_the_lan(self) -> None:
        lan = Lan(hairpinning=False)
        self.assertEqual(len(lan.local["a"].peers), 1)  # b's announcement reached a
        self.assertTrue(lan.ping("a"))
        self.assertTrue(lan.ping("b"))
        self.assertFalse(lan.local["a"].hairpinning_used)
        self.assertGreater(lan.counters["a"]["client.local_trusted"], 0)

    def test_a_hairpinning_nat_still_works_as_before(self) -> None:
        lan = Lan(discovery=False, hairpinning=False, hairpin_nat=True)
        self.assertTrue(lan.ping("a"))
        self.assertTrue(lan.ping("b"))

    def test_a_peer_without_trailers_or_discovery_is_not_reached_over_the_lan(self) -> None:
        """Like Miredo beside us: it neither announces nor offers an address; nothing breaks."""
        lan = Lan(discovery=False, trailers_from_b=False)
        self.assertFalse(lan.ping("b"))
        self.assertEqual(lan.tun["a"], [])

    def test_a_lan_packet_no_one_vouched_for_is_dropped(self) -> None:
        lan = Lan(discovery=False, hairpinning=False)
        packet = build_packet(ADDRESS["b"], ADDRESS["a"], 58, b"spoofed")
        lan.peers["a"].from_udp(packet, *LAN["b"], lan.now)
        self.assertEqual(lan.tun["a"], [])
        self.assertEqual(lan.counters["a"].drops(), {"teredo-mapping-mismatch": 1})

    def test_a_trailer_offered_unasked_is_not_trusted(self) -> None:
        """Its own trailer lets a peer in only while we are looking for it."""
        lan = Lan(discovery=False)
        offer = AlternateAddressTrailer(((ipv4_to_int(LAN["b"][0]), LAN["b"][1]),)).pack()
        packet = build_packet(ADDRESS["b"], ADDRESS["a"], 58, b"unasked")
        lan.peers["a"].from_udp(build_bubble(ADDRESS["b"], ADDRESS["a"]) + offer, *LAN["b"], lan.now)
        lan.peers["a"].from_udp(packet, *LAN["b"], lan.now)
        self.assertEqual(lan.tun["a"], [])
        self.assertEqual(lan.counters["a"].drops(), {"teredo-mapping-mismatch": 2})

    def test_alternates_from_a_peer_behind_another_nat_are_ignored(self) -> None:
        one = One()
        offer = AlternateAddressTrailer(((ipv4_to_int("198.19.0.3"), 40002),)).pack()
        self.assertEqual(one.local.alternates(offer, ELSEWHERE), ())
        self.assertEqual(one.local.alternates(offer, ADDRESS["b"]), (("198.19.0.3", 40002),))

    def test_a_malformed_trailer_on_an_indirect_bubble_is_a_counted_drop(self) -> None:
        lan = Lan(discovery=False)
        relayed = origin_indication(ipv4_to_int(WAN), 50002) + build_bubble(ADDRESS["b"], ADDRESS["a"]) + b"\x03\x07x"
        lan.peers["a"].from_udp(relayed, *SERVER, lan.now)
        self.assertEqual(lan.wire, [])
        self.assertEqual(lan.counters["a"].drops(), {"trailer-truncated": 1})
