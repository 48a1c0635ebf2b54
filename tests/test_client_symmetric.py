"""roles/client_symmetric.py and its hooks in client_datapath: RFC 6081 §5.2 Symmetric NAT Support.

Two of our clients, a Teredo server that relays indirect bubbles, and NATs modelled on what
the RFC's §3.1 distinguishes: a port-symmetric NAT (a new port per destination, replies
only from that destination), an address-restricted cone NAT and a port-restricted one.
"""

from __future__ import annotations

import random
from collections import deque

from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.roles.client_datapath import ClientPeers
from teredo_appliance.roles.client_symmetric import NONCE_LIFETIME, SymmetricNat
from teredo_appliance.stats import Counters
from teredo_appliance.wire.address import TeredoAddress, int_to_ipv4, ipv4_to_int, teredo_mapping
from teredo_appliance.wire.ipv6 import build_packet, parse_header
from teredo_appliance.wire.teredo import build_bubble, origin_indication, parse_datagram
from teredo_appliance.wire.trailers import NonceTrailer, parse_trailers

SERVER = ("198.18.0.1", 3544)
NAT_A_IP, NAT_B_IP = "198.18.0.201", "198.18.0.202"

Endpoint = tuple[str, int]


class Nat:
    """A NAT in front of one client: `symmetric` maps each destination to a new port;
    `filtering` lets in replies from the destination's address ("address") or from the
    destination's address and port only ("port")."""

    def __init__(self, public_ip: str, *, symmetric: bool, filtering: str, first_port: int) -> None:
        self.ip = public_ip
        self.symmetric = symmetric
        self.filtering = filtering
        self._next = first_port
        self._ports: dict[Endpoint | None, int] = {}
        self._allowed: set[tuple[int, str, int | None]] = set()

    def outbound(self, to: Endpoint) -> int:
        key = to if self.symmetric else None
        if key not in self._ports:
            self._ports[key] = self._next
            self._next += 7
        port = self._ports[key]
        self._allowed.add((port, to[0], to[1] if self.filtering == "port" else None))
        return port

    def inbound(self, port: int, source: Endpoint) -> bool:
        return (port, source[0], source[1] if self.filtering == "port" else None) in self._allowed


class Network:
    """Our two clients behind their NATs and the server between them, run packet by packet."""

    def __init__(self, nat_a: Nat, nat_b: Nat, *, a_symmetric_support: bool = True,
                 b_symmetric_support: bool = True, load_reduction: tuple[bool, bool] = (True, True)) -> None:
        self.now = 100.0
        self.nats = {"a": nat_a, "b": nat_b}
        self.tun: dict[str, list[bytes]] = {"a": [], "b": []}
        self.queue: deque[tuple[str, bytes, Endpoint]] = deque()
        self.counters = {"a": Counters(), "b": Counters()}
        rng = random.Random(6081)
        self.relayed = 0  # bubbles the server relayed: its load
        self.peers = {
            name: ClientPeers(lambda p, to, name=name: self.queue.append((name, p, to)), self.tun[name].append,
                              self.counters[name], rng=rng, symmetric_nat=support, server_load_reduction=reduce)
            for name, support, reduce in (("a", a_symmetric_support, load_reduction[0]),
                                          ("b", b_symmetric_support, load_reduction[1]))
        }
        self.addresses = {}
        for name, nat in self.nats.items():
            mapped = nat.outbound(SERVER)  # qualification: the server saw this mapping
            self.addresses[name] = TeredoAddress(ipv4_to_int(SERVER[0]), 0, mapped, ipv4_to_int(nat.ip)).pack()
            self.peers[name].attach(self.addresses[name], ipv4_to_int(SERVER[0]),
                                    behind_symmetric=nat.symmetric)

    def run(self) -> None:
        for _ in range(1000):
            if not self.queue:
                return
            sender, payload, to = self.queue.popleft()
            port = self.nats[sender].outbound(to)
            source = (self.nats[sender].ip, port)
            if to == SERVER:
                self._server(payload, source)
            else:
                self._deliver(payload, source, to)
        raise AssertionError("the network never went quiet")

    def _server(self, payload: bytes, source: Endpoint) -> None:
        """A Teredo server relays a bubble to the mapping its destination embeds (RFC 4380 §5.3.1)."""
        datagram = parse_datagram(payload)
        header = parse_header(datagram.packet)
        if teredo_mapping(header.source) != (ipv4_to_int(source[0]), source[1]):
            return  # not the client it claims to be
        ip, port = teredo_mapping(header.destination)
        self.relayed += 1
        relayed = origin_indication(ipv4_to_int(source[0]), source[1]) + datagram.packet + datagram.trailer
        self._deliver(relayed, SERVER, (int_to_ipv4(ip), port))

    def _deliver(self, payload: bytes, source: Endpoint, to: Endpoint) -> None:
        for name, nat in self.nats.items():
            if nat.ip == to[0] and nat.inbound(to[1], source):
                self.peers[name].from_udp(payload, source[0], source[1], self.now)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            deadlines = [d for p in self.peers.values() if (d := p.next_deadline()) is not None and d <= end]
            if not deadlines:
                break
            self.now = max(self.now, min(deadlines))
            for peers in self.peers.values():
                peers.on_timer(self.now)
            self.run()
        self.now = end

    def ping(self, sender: str, receiver: str, tag: bytes) -> bool:
        """Send one packet from `sender`'s TUN; retry discovery for 10 s; True if it reached `receiver`."""
        packet = build_packet(self.addresses[sender], self.addresses[receiver], 17, tag)
        self.peers[sender].from_tun(packet, self.now)
        self.run()
        for _ in range(10):
            if packet in self.tun[receiver]:
                return True
            self.advance(1.0)
        return packet in self.tun[receiver]


def symmetric_nat() -> Nat:
    return Nat(NAT_A_IP, symmetric=True, filtering="port", first_port=40000)


class PairingTests(SynchronousTestCase):
    """What RFC 6081 §3.1 says a client behind a port-symmetric NAT reaches, end to end."""

    def test_symmetric_and_address_restricted_reach_each_other_both_ways(self) -> None:
        net = Network(symmetric_nat(), Nat(NAT_B_IP, symmetric=False, filtering="address", first_port=50000))
        self.assertTrue(net.ping("a", "b", b"a to b"))
        self.assertTrue(net.ping("b", "a", b"b to a"))
        self.assertEqual(net.counters["b"]["client.symmetric_peer_followed"], 1)
        followed = net.peers["b"].table.get(net.addresses["a"])
        assert followed is not None
        self.assertTrue(followed.trusted)
        self.assertNotEqual(followed.mapping, (NAT_A_IP, teredo_mapping(net.addresses["a"])[1]))

    def test_the_address_restricted_side_may_speak_first(self) -> None:
        net = Network(symmetric_nat(), Nat(NAT_B_IP, symmetric=False, filtering="address", first_port=50000))
        self.assertTrue(net.ping("b", "a", b"b first"))
        self.assertTrue(net.ping("a", "b", b"a answers"))

    def test_without_the_receiver_side_the_symmetric_peer_stays_out_of_reach(self) -> None:
        """RFC 4380 alone (the receiver does not follow nonces): the direct bubble from the
        symmetric NAT's new port is refused, as Miredo refuses it."""
        net = Network(symmetric_nat(), Nat(NAT_B_IP, symmetric=False, filtering="address", first_port=50000),
                      b_symmetric_support=False)
        self.assertFalse(net.ping("a", "b", b"a to b"))
        self.assertGreater(net.counters["b"].drops().get("teredo-mapping-mismatch", 0), 0)

    def test_symmetric_and_port_restricted_do_not_meet(self) -> None:
        """RFC 6081 §3.1: a port-restricted NAT only answers the port it sent to, the one the
        symmetric NAT keeps for the server. No trust is ever given by mistake either."""
        net = Network(symmetric_nat(), Nat(NAT_B_IP, symmetric=False, filtering="port", first_port=50000))
        self.assertFalse(net.ping("a", "b", b"a to b"))
        self.assertFalse(net.ping("b", "a", b"b to a"))
        self.assertEqual(net.counters["b"]["client.symmetric_peer_followed"], 0)


class NonceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sent: list[tuple[bytes, Endpoint]] = []
        self.tun: list[bytes] = []
        self.counters = Counters()
        self.peers = ClientPeers(lambda p, to: self.sent.append((p, to)), self.tun.append, self.counters,
                                 rng=random.Random(1))
        self.me = TeredoAddress(ipv4_to_int(SERVER[0]), 0, 40000, ipv4_to_int(NAT_A_IP)).pack()
        self.peer = TeredoAddress(ipv4_to_int(SERVER[0]), 0, 50000, ipv4_to_int(NAT_B_IP)).pack()
        self.now = 10.0

    def nonces(self) -> list[bytes | None]:
        found = []
        for payload, _ in self.sent:
            datagram = parse_datagram(payload)
            trailers = [t for t in parse_trailers(datagram.trailer) if isinstance(t, NonceTrailer)]
            found.append(trailers[0].nonce if trailers else None)
        return found

    def test_behind_a_symmetric_nat_both_bubbles_carry_one_nonce_per_peer(self) -> None:
        self.peers.attach(self.me, ipv4_to_int(SERVER[0]), behind_symmetric=True)
        self.peers.from_tun(build_packet(self.me, self.peer, 17, b"x"), self.now)
        nonces = self.nonces()
        self.assertEqual(len(nonces), 2)
        self.assertIsNotNone(nonces[0])
        self.assertEqual(nonces[0], nonces[1])
        self.assertEqual({to for _, to in self.sent}, {(NAT_B_IP, 50000), SERVER})

    def test_behind_another_nat_bubbles_carry_no_nonce(self) -> None:
        """Nothing for a peer to follow; Miredo peers see exactly RFC 4380 bubbles."""
        self.peers.attach(self.me, ipv4_to_int(SERVER[0]), behind_symmetric=False)
        self.peers.from_tun(build_packet(self.me, self.peer, 17, b"x"), self.now)
        self.assertEqual(self.nonces(), [None, None])

    def relayed(self, nonce: bytes) -> None:
        bubble = origin_indication(ipv4_to_int(NAT_B_IP), 50000) + build_bubble(self.peer, self.me)
        self.peers.from_udp(bubble + NonceTrailer(nonce).pack(), *SERVER, self.now)

    def direct(self, nonce: bytes, port: int = 61000, payload: bool = False) -> None:
        packet = build_packet(self.peer, self.me, 17, b"data") if payload else build_bubble(self.peer, self.me)
        self.peers.from_udp(packet + NonceTrailer(nonce).pack(), NAT_B_IP, port, self.now)

    def trusted_at(self) -> Endpoint | None:
        peer = self.peers.table.get(self.peer)
        return None if peer is None or not peer.trusted else peer.mapping

    def test_a_direct_bubble_at_another_mapping_is_followed_with_the_relayed_nonce(self) -> None:
        self.peers.attach(self.me, ipv4_to_int(SERVER[0]))
        self.relayed(b"\x01\x02\x03\x04")
        self.sent.clear()
        self.direct(b"\x01\x02\x03\x04")
        self.assertEqual(self.trusted_at(), (NAT_B_IP, 61000))
        self.assertEqual([to for _, to in self.sent], [(NAT_B_IP, 61000)])  # our answer opens its NAT

    def test_a_wrong_nonce_an_unrelayed_one_a_stale_one_or_a_data_packet_is_refused(self) -> None:
        self.peers.attach(self.me, ipv4_to_int(SERVER[0]))
        self.direct(b"\x01\x02\x03\x04")  # nothing relayed yet
        self.relayed(b"\x01\x02\x03\x04")
        self.direct(b"\x09\x09\x09\x09")  # wrong nonce
        self.direct(b"\x01\x02\x03\x04", payload=True)  # only a bubble may move a peer
        self.assertIsNone(self.trusted_at())
        self.assertEqual(self.tun, [])
        self.now += NONCE_LIFETIME + 1
        self.direct(b"\x01\x02\x03\x04")  # stale
        self.assertIsNone(self.trusted_at())
        self.assertEqual(self.counters.drops()["teredo-mapping-mismatch"], 4)

    def test_the_extension_off_follows_nobody(self) -> None:
        self.peers = ClientPeers(lambda p, to: self.sent.append((p, to)), self.tun.append, self.counters,
                                 symmetric_nat=False)
        self.peers.attach(self.me, ipv4_to_int(SERVER[0]), behind_symmetric=True)
        self.relayed(b"\x01\x02\x03\x04")
        self.direct(b"\x01\x02\x03\x04")
        self.assertIsNone(self.trusted_at())

    def test_a_new_address_forgets_the_nonces(self) -> None:
        self.peers.attach(self.me, ipv4_to_int(SERVER[0]))
        self.relayed(b"\x01\x02\x03\x04")
        other = TeredoAddress(ipv4_to_int(SERVER[0]), 0, 40001, ipv4_to_int(NAT_A_IP)).pack()
        self.peers.attach(other, ipv4_to_int(SERVER[0]))
        self.peers.attach(self.me, ipv4_to_int(SERVER[0]))
        self.direct(b"\x01\x02\x03\x04")
        self.assertIsNone(self.trusted_at())


class BoundTests(SynchronousTestCase):
    def test_a_flood_of_relayed_nonces_keeps_at_most_the_bound(self) -> None:
        symmetric = SymmetricNat(random.Random(2), max_nonces=8)
        for i in range(100):
            symmetric.heard_relayed(i.to_bytes(16, "big"), NonceTrailer(i.to_bytes(4, "big")).pack(), 1.0)
        self.assertEqual(symmetric.stats()["symmetric_nonces_heard"], 8)
        self.assertTrue(symmetric.vouches((99).to_bytes(16, "big"), NonceTrailer((99).to_bytes(4, "big")).pack(), 2.0))
        self.assertFalse(symmetric.vouches((0).to_bytes(16, "big"), NonceTrailer((0).to_bytes(4, "big")).pack(), 2.0))

    def test_malformed_trailers_vouch_for_nobody(self) -> None:
        symmetric = SymmetricNat(random.Random(3))
        source = bytes(16)
        symmetric.heard_relayed(source, b"\x01\x04\x00", 1.0)  # truncated
        symmetric.heard_relayed(source, NonceTrailer(b"abcd").pack(), 1.0)
        self.assertFalse(symmetric.vouches(source, b"\x01\x03abc", 1.0))  # wrong length
        self.assertFalse(symmetric.vouches(source, b"", 1.0))
        self.assertTrue(symmetric.vouches(source, b"\x77\x00" + NonceTrailer(b"abcd").pack(), 1.0))  # unknown skipped


class DescribeTests(SynchronousTestCase):
    def test_the_netsh_style_line_names_the_upnp_mapping_and_unknowns(self) -> None:
        from teredo_appliance.roles.nat_behaviour import describe

        line = describe({"upnp": True, "upnp_mapping": "198.18.2.1:40000", "port_preserving": False,
                         "sequential": None, "hairpinning": True, "local_peers": 2, "indirect_bubbles_saved": 3})
        self.assertEqual(line, "UPnP: yes (198.18.2.1:40000), PortPreserving: no, Sequential: unknown, "
                               "Hairpinning used: yes, Local peers: 2, Indirect bubbles saved: 3")
        self.assertTrue(describe({"indirect_bubbles_saved": None}).endswith("Indirect bubbles saved: off"))
