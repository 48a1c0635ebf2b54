"""roles/client_load_reduction.py and its hooks in client_datapath: RFC 6081 §5.7 Server Load Reduction.

The module alone, then one client of ours against a hand-driven peer, then two clients
behind modelled NATs with a server between them (tests/test_client_symmetric.py's model),
counting the bubbles the server relays with the extension on, off, and against a peer that
knows nothing of it (what Miredo is: RFC 4380 only, trailers ignored).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.config import parse_config
from teredo_appliance.config_model import ClientExtensions
from teredo_appliance.peers import IDLE_TIMEOUT
from teredo_appliance.roles.client_datapath import ADVERTISEMENTS_PER_SECOND, TOUCH_GRANULARITY
from teredo_appliance.roles.client_load_reduction import (
    ADVERTISEMENT,
    KNOWN_LIFETIME,
    SOLICITATION,
    ServerLoadReduction,
)
from teredo_appliance.wire.address import TeredoAddress, ipv4_to_int
from teredo_appliance.wire.ipv6 import build_echo, build_packet, parse_echo, parse_header
from teredo_appliance.wire.teredo import build_bubble, origin_indication
from teredo_appliance.wire.trailers import (
    ND_ADVERTISEMENT,
    ND_SOLICITATION,
    NeighborDiscoveryTrailer,
    NonceTrailer,
)
from tests import test_client_datapath as datapath
from tests.test_client_symmetric import NAT_A_IP, NAT_B_IP, Nat, Network

ME = TeredoAddress(ipv4_to_int("198.18.0.1"), 0, 50000, ipv4_to_int("198.18.0.100")).pack()
PEER = TeredoAddress(ipv4_to_int("198.18.0.1"), 0, 40000, ipv4_to_int("198.18.0.200")).pack()
PEER_MAPPING = ("198.18.0.200", 40000)
SERVER = ("198.18.0.1", 3544)
SOLICIT = [NeighborDiscoveryTrailer(ND_SOLICITATION)]
ADVERTISE = [NeighborDiscoveryTrailer(ND_ADVERTISEMENT)]


class ModuleTests(SynchronousTestCase):
    def test_an_advertiser_gets_one_direct_only_round_and_an_answer_counts_as_saved(self) -> None:
        load = ServerLoadReduction()
        self.assertFalse(load.direct_only(PEER, PEER_MAPPING, 1.0))  # never advertised
        self.assertFalse(load.heard(PEER, PEER_MAPPING, ADVERTISE, 1.0))  # does not solicit
        self.assertTrue(load.direct_only(PEER, PEER_MAPPING, 50.0))
        self.assertTrue(load.trusted(PEER, 51.0))
        self.assertFalse(load.trusted(PEER, 52.0))  # once per round
        self.assertEqual((load.saved, load.fallbacks), (1, 0))
        self.assertTrue(load.direct_only(PEER, PEER_MAPPING, 100.0))  # still known after the answer

    def test_an_unanswered_direct_only_round_falls_back_and_forgets_the_peer(self) -> None:
        load = ServerLoadReduction()
        load.heard(PEER, PEER_MAPPING, ADVERTISE, 1.0)
        self.assertTrue(load.direct_only(PEER, PEER_MAPPING, 50.0))
        self.assertFalse(load.direct_only(PEER, PEER_MAPPING, 52.0))  # the retry: the usual pair
        self.assertFalse(load.direct_only(PEER, PEER_MAPPING, 54.0))
        load.trusted(PEER, 55.0)
        self.assertEqual((load.saved, load.fallbacks, load.stats()["load_reduction_known"]), (0, 1, 0))

    def test_another_mapping_or_an_old_advertisement_is_no_guide(self) -> None:
        load = ServerLoadReduction()
        load.heard(PEER, PEER_MAPPING, ADVERTISE, 1.0)
        self.assertFalse(load.direct_only(PEER, ("198.18.0.200", 40001), 2.0))
        load.heard(PEER, PEER_MAPPING, ADVERTISE, 10.0)
        self.assertFalse(load.direct_only(PEER, PEER_MAPPING, 10.0 + KNOWN_LIFETIME + 1))

    def test_solicitations_are_answered_and_nothing_else_is(self) -> None:
        load = ServerLoadReduction()
        self.assertTrue(load.heard(PEER, PEER_MAPPING, SOLICIT, 1.0))
        self.assertFalse(load.heard(PEER, PEER_MAPPING, [NonceTrailer(b"abcd")], 1.0))
        self.assertFalse(load.heard(PEER, PEER_MAPPING, [], 1.0))
        self.assertFalse(load.direct_only(PEER, PEER_MAPPING, 2.0))  # a solicitation is no advertisement

    def test_memory_is_bounded(self) -> None:
        load = ServerLoadReduction(max_known=3)
        peers = [bytes([n]) * 16 for n in range(5)]
        for n, peer in enumerate(peers):
            load.heard(peer, PEER_MAPPING, ADVERTISE, float(n))
        self.assertEqual(load.stats()["load_reduction_known"], 3)
        self.assertFalse(load.direct_only(peers[0], PEER_MAPPING, 5.0))
        self.assertTrue(load.direct_only(peers[4], PEER_MAPPING, 5.0))


class Harness(datapath.Harness):
    """One client of ours at ME, with or without the extension; the test plays its peer and its server."""

    def __init__(self, *, load_reduction: bool = True) -> None:
        super().__init__(ME, 6081, server_load_reduction=load_reduction)

    def send(self, tag: bytes) -> bytes:
        packet = build_packet(ME, PEER, 17, tag)
        self.peers.from_tun(packet, self.now)
        return packet

    def peer_bubble(self, trailer: bytes = b"") -> None:
        self.peers.from_udp(build_bubble(PEER, ME) + trailer, *PEER_MAPPING, self.now)

    def known_peer(self) -> None:
        """A first exchange in which the peer advertised, then silence until its entry expired."""
        self.send(b"first")
        self.take()
        self.peer_bubble(ADVERTISEMENT)
        self.take()
        self.advance(IDLE_TIMEOUT + 1)
        assert self.peers.table.get(PEER) is None


class DataPathTests(SynchronousTestCase):
    def test_a_peer_that_advertised_is_rediscovered_with_the_direct_bubble_alone(self) -> None:
        h = Harness()
        h.known_peer()
        packet = h.send(b"again")
        self.assertEqual(h.take(), [(build_bubble(ME, PEER) + SOLICITATION, PEER_MAPPING)])  # nothing to SERVER
        h.peer_bubble(ADVERTISEMENT)
        self.assertEqual(h.take(), [(packet, PEER_MAPPING)])
        self.assertEqual(h.peers.stats()["indirect_bubbles_saved"], 1)
        self.assertEqual((h.counters["client.bubble_direct_only"], h.counters["client.indirect_bubble_saved"]), (1, 1))

    def test_no_answer_falls_back_to_both_bubbles_within_the_usual_pacing(self) -> None:
        h = Harness()
        h.known_peer()
        packet = h.send(b"again")
        self.assertEqual([to for _, to in h.take()], [PEER_MAPPING])
        h.advance(1.9)
        self.assertEqual(h.take(), [])  # RFC 4380 §5.2.6: not before 2 s
        h.advance(0.1)
        self.assertEqual([to for _, to in h.take()], [PEER_MAPPING, SERVER])  # the fallback
        h.peer_bubble()  # the peer (its NAT lost us) answered the indirect one as RFC 4380 says
        self.assertEqual(h.take(), [(packet, PEER_MAPPING)])
        self.assertEqual((h.peers.stats()["indirect_bubbles_saved"], h.peers.stats()["load_reduction_fallbacks"]),
                         (0, 1))

    def test_a_solicitation_from_the_peers_own_mapping_is_answered_with_an_advertisement(self) -> None:
        h = Harness()
        h.peer_bubble(SOLICITATION)
        self.assertEqual(h.take(), [(build_bubble(ME, PEER) + ADVERTISEMENT, PEER_MAPPING)])
        self.assertTrue(h.peers.table.get(PEER).trusted)  # type: ignore[union-attr]
        # Again while trusted (the fast path): paced, 2 s apart per mapping.
        h.now += 0.5
        h.peer_bubble(SOLICITATION)
        self.assertEqual(h.take(), [])
        self.assertEqual(h.counters.drops(), {"advertisement-paced": 1})
        h.now += 2.0
        h.peer_bubble(SOLICITATION)
        self.assertEqual(len(h.take()), 1)

    def test_forged_solicitations_reflect_a_bounded_trickle(self) -> None:
        h = Harness()
        for n in range(200):  # 200 different forged Teredo sources, each at the mapping it embeds
            source = TeredoAddress(ipv4_to_int("198.18.0.1"), 0, 1000 + n, ipv4_to_int("198.18.0.201")).pack()
            h.peers.from_udp(build_bubble(source, ME) + SOLICITATION, "198.18.0.201", 1000 + n, h.now)
        self.assertEqual(len(h.take()), ADVERTISEMENTS_PER_SECOND)

    def test_a_soliciting_bubble_relayed_by_our_server_is_answered_with_an_advertisement(self) -> None:
        h = Harness()
        relayed = origin_indication(ipv4_to_int(PEER_MAPPING[0]), PEER_MAPPING[1]) + build_bubble(PEER, ME)
        h.peers.from_udp(relayed + SOLICITATION, *SERVER, h.now)
        self.assertEqual(h.take(), [(build_bubble(ME, PEER) + ADVERTISEMENT, PEER_MAPPING)])
        h.now += 3.0
        h.peers.from_udp(relayed, *SERVER, h.now)  # an RFC 4380 peer's: the plain answer, as before
        self.assertEqual(h.take(), [(build_bubble(ME, PEER), PEER_MAPPING)])

    def test_a_malformed_nd_trailer_is_a_counted_drop(self) -> None:
        h = Harness()
        h.peer_bubble(b"\x04\x00")  # no DiscoveryType at all
        h.peer_bubble(b"\x04\x04\x07\x00\x00\x00")  # a DiscoveryType RFC 6081 §4.4 does not define
        self.assertEqual(h.counters.drops(), {"nd-option-trailer-length": 1, "nd-option-trailer-type": 1})
        self.assertIsNone(h.peers.table.get(PEER))
        self.assertEqual(h.take(), [])

    def test_a_native_peers_bubble_through_its_relay_is_not_advertised_to(self) -> None:
        h = Harness()
        native = bytes.fromhex("20010db8000100000000000000000002")
        relay = ("198.18.0.10", 3544)
        h.peers.from_tun(build_packet(ME, native, 17, b"x"), h.now)
        echo_packet = h.take()[-1][0]
        echo = parse_echo(echo_packet, parse_header(echo_packet))
        assert echo is not None
        reply = build_echo(native, ME, echo.identifier, echo.sequence, echo.data, reply=True)
        h.peers.from_udp(reply, *relay, h.now)  # the echo test's answer: trusted through the relay
        self.assertTrue(h.peers.table.get(native).trusted)  # type: ignore[union-attr]
        h.take()
        h.now += TOUCH_GRANULARITY  # the bubble below takes the fast path's reception too
        h.peers.from_udp(build_bubble(native, ME) + SOLICITATION, *relay, h.now)
        self.assertEqual(h.take(), [])
        self.assertEqual(h.counters["client.bubble_advertised"], 0)

    def test_an_unknown_trailer_type_is_skipped(self) -> None:
        h = Harness()
        h.peer_bubble(b"\x77\x02ab" + SOLICITATION)
        self.assertEqual(h.take(), [(build_bubble(ME, PEER) + ADVERTISEMENT, PEER_MAPPING)])
        self.assertEqual(h.counters.drops(), {})

    @given(st.binary(max_size=40), st.booleans())
    def test_any_trailer_after_a_bubble_is_taken_or_a_counted_drop(self, trailer: bytes, trusted: bool) -> None:
        h = Harness()
        if trusted:
            h.peer_bubble()  # the fast path for the second one
        h.now += TOUCH_GRANULARITY
        h.peer_bubble(trailer)
        sent = h.take()
        self.assertLessEqual(len(sent), 1)
        accepted = h.counters["client.bubble_in"] == 1 + trusted
        self.assertNotEqual(accepted, bool(h.counters.drops()), (trailer, h.counters.drops()))

    def test_off_it_neither_solicits_nor_answers_nor_skips_the_server(self) -> None:
        h = Harness(load_reduction=False)
        h.peer_bubble(SOLICITATION)
        self.assertEqual(h.take(), [])  # RFC 4380: a direct bubble is not answered
        self.assertEqual(h.peers.stats().get("indirect_bubbles_saved"), None)
        h.advance(IDLE_TIMEOUT + 1)
        h.send(b"x")
        self.assertEqual(h.take(), [(build_bubble(ME, PEER), PEER_MAPPING), (build_bubble(ME, PEER), SERVER)])

    def test_behind_a_symmetric_nat_the_indirect_bubble_is_never_left_out(self) -> None:
        h = Harness()
        h.peers.attach(ME, ipv4_to_int(SERVER[0]), behind_symmetric=True)
        h.known_peer()
        h.send(b"again")
        self.assertEqual([to for _, to in h.take()], [PEER_MAPPING, SERVER])  # its nonce goes through SERVER


def restricted(ip: str, port: int) -> Nat:
    """A port-restricted cone NAT, as Linux (and the lab's NAT 1) makes them."""
    return Nat(ip, symmetric=False, filtering="port", first_port=port)


class PairingTests(SynchronousTestCase):
    """Two clients behind port-restricted NATs, a server between them: pings both ways, an idle
    spell past the entries' 30 s (the NATs keep their mappings longer), pings again."""

    def exchange(self, net: Network) -> int:
        for round_ in range(3):
            self.assertTrue(net.ping("a", "b", b"a to b %d" % round_))
            self.assertTrue(net.ping("b", "a", b"b to a %d" % round_))
            net.advance(IDLE_TIMEOUT + 5)
        return net.relayed

    def test_two_of_ours_load_the_server_less_with_the_extension(self) -> None:
        on = self.exchange(Network(restricted(NAT_A_IP, 40000), restricted(NAT_B_IP, 50000)))
        off = self.exchange(Network(restricted(NAT_A_IP, 40000), restricted(NAT_B_IP, 50000),
                                    load_reduction=(False, False)))
        # Off: every rediscovery bubbles through the server. On: only the first one does.
        self.assertEqual((on, off), (1, 3))

    def test_against_a_peer_without_it_nothing_changes(self) -> None:
        """What Miredo is: trailers ignored, never an advertisement. Pairing works as before."""
        mixed = Network(restricted(NAT_A_IP, 40000), restricted(NAT_B_IP, 50000), load_reduction=(True, False))
        plain = Network(restricted(NAT_A_IP, 40000), restricted(NAT_B_IP, 50000), load_reduction=(False, False))
        self.assertEqual(self.exchange(mixed), self.exchange(plain))
        self.assertEqual(mixed.peers["a"].stats()["indirect_bubbles_saved"], 0)
        self.assertEqual(mixed.counters["a"]["client.bubble_direct_only"], 0)


class ConfigTests(SynchronousTestCase):
    def test_the_key_is_on_by_default_and_can_be_turned_off(self) -> None:
        base = "roles:\n  client:\n    server_address: 198.18.0.1\n"
        self.assertTrue(parse_config(base, "teredo.yaml").roles.client.extensions.server_load_reduction)
        off = parse_config(base + "    extensions: {server_load_reduction: false}\n", "teredo.yaml")
        self.assertEqual(off.roles.client.extensions, ClientExtensions(server_load_reduction=False))
