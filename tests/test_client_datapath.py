"""roles/client_datapath.py: bubbles, relay trust by echo, held and queued packets, bounds."""

from __future__ import annotations

import random
from ipaddress import IPv6Address
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.peers import BUBBLE_WINDOW, QUEUE_BYTES
from teredo_appliance.ratelimit import ICMP_ERRORS_PER_SECOND
from teredo_appliance.roles.client_datapath import RELAY_RECHECKS_PER_SECOND, RELAY_SILENCE, ClientPeers
from teredo_appliance.roles.client_load_reduction import SOLICITATION
from teredo_appliance.stats import Counters
from teredo_appliance.wire.address import TeredoAddress, ipv4_to_int
from teredo_appliance.wire.ipv6 import (
    NEXT_HEADER_ICMPV6,
    build_echo,
    build_packet,
    build_unreachable,
    parse_echo,
    parse_header,
    quoted_packet,
)
from teredo_appliance.wire.teredo import build_bubble, origin_indication, parse_datagram
from tests.vectors import MIREDO

ME = IPv6Address("2001:0:c612:1:1c6b:3203:39ed:ff9b").packed  # the vectors' client
SERVER = ("198.18.0.1", 3544)
RELAY = ("198.18.0.10", 49030)
OTHER_RELAY = ("198.18.0.11", 3544)
V6HOST = IPv6Address("2001:db8:1::2").packed
ROUTER = IPv6Address("2001:db8:1::99").packed
RELAY_LINK_LOCAL = IPv6Address("fe80::ffff:ffff:ffff").packed  # every relay's bubble source
PEER = TeredoAddress(ipv4_to_int("198.18.0.1"), 0x0400, 40000, ipv4_to_int("198.18.0.200")).pack()
PEER_MAPPING = ("198.18.0.200", 40000)


def data(destination: bytes = V6HOST, size: int = 100, source: bytes = ME) -> bytes:
    return build_packet(source, destination, 17, bytes(size))


class Harness:
    """One client's data path at address `me`; the test plays its peers and its server.
    `options` go to ClientPeers (the extensions' switches)."""

    def __init__(self, me: bytes = ME, seed: int = 5991, **options: Any) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.tun: list[bytes] = []
        self.counters = Counters()
        self.heard: list[float] = []  # when a well-formed packet came from the server
        self.peers = ClientPeers(lambda p, a: self.sent.append((p, a)), self.tun.append, self.counters,
                                 rng=random.Random(seed), heard_server=self.heard.append, **options)
        self.peers.attach(me, ipv4_to_int(SERVER[0]))
        self.now = 100.0

    def take(self) -> list[tuple[bytes, tuple[str, int]]]:
        sent, self.sent = self.sent, []
        return sent

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while (deadline := self.peers.next_deadline()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            self.peers.on_timer(self.now)
        self.now = end

    def echo_test(self) -> bytes:
        """The relay-finding echo last sent (through the server)."""
        payload, to = self.sent[-1]
        assert to == SERVER, to
        return payload

    def reply_to(self, echo_packet: bytes, via: tuple[str, int] = RELAY, data: bytes | None = None) -> None:
        header = parse_header(echo_packet)
        echo = parse_echo(echo_packet, header)
        assert echo is not None and not echo.reply
        reply = build_echo(header.destination, header.source, echo.identifier, echo.sequence,
                           echo.data if data is None else data, reply=True)
        self.peers.from_udp(reply, *via, self.now)


class IndirectBubbleTests(SynchronousTestCase):
    def test_answer_is_byte_identical_to_miredo(self) -> None:
        h = Harness()
        forwarded, expected = MIREDO["bubble-forwarded-with-origin"], MIREDO["bubble-client-to-relay"]
        h.peers.from_udp(forwarded.payload, SERVER[0], SERVER[1], h.now)
        self.assertEqual(h.sent, [(expected.payload, RELAY)])
        self.assertEqual(h.tun, [])

    def test_non_global_origin_is_not_answered(self) -> None:
        h = Harness()
        bubble = origin_indication(ipv4_to_int("10.1.2.3"), 5000) + build_bubble(V6HOST, ME)
        h.peers.from_udp(bubble, *SERVER, h.now)
        self.assertEqual(h.sent, [])
        self.assertEqual(h.counters.drops(), {"origin-non-global": 1})

    def test_replies_are_paced_like_our_own_bubbles(self) -> None:
        """RFC 4380 §5.2.6 MUST: 2 s apart, at most 4 in 300 s to one peer without an answer."""
        h = Harness()
        bubble = MIREDO["bubble-forwarded-with-origin"].payload  # origin: RELAY
        for n in range(50):
            h.peers.from_udp(bubble, *SERVER, h.now + n / 50)
        self.assertEqual(h.take(), [(MIREDO["bubble-client-to-relay"].payload, RELAY)])
        for t in (1.9, 2.0, 4.0, 6.0, 8.0, 100.0):
            h.peers.from_udp(bubble, *SERVER, h.now + t)
        self.assertEqual(len(h.take()), 3)  # at +2, +4, +6: four in all
        self.assertEqual(h.counters.drops(), {"bubble-reply-paced": 49 + 3})
        h.peers.from_udp(bubble, *SERVER, h.now + 6.0 + BUBBLE_WINDOW)
        self.assertEqual(len(h.take()), 1)

    def test_an_answer_from_the_origin_renews_the_replies(self) -> None:
        h = Harness()
        bubble = MIREDO["bubble-forwarded-with-origin"].payload
        for t in (0.0, 2.0, 4.0, 6.0):
            h.peers.from_udp(bubble, *SERVER, h.now + t)
        h.now += 7.0
        h.peers.from_tun(data(), h.now)  # the relay that bubbled us answers our echo test
        h.reply_to(h.echo_test())
        h.take()
        h.peers.from_udp(bubble, *SERVER, h.now + 1.0)
        self.assertEqual(h.take(), [(MIREDO["bubble-client-to-relay"].payload, RELAY)])

    def test_two_relays_bubbling_at_once_are_both_answered(self) -> None:
        """Relays all bubble from the same link-local: replies are paced per origin."""
        h = Harness()
        for relay in (RELAY, OTHER_RELAY):
            bubble = origin_indication(ipv4_to_int(relay[0]), relay[1]) + build_bubble(RELAY_LINK_LOCAL, ME)
            h.peers.from_udp(bubble, *SERVER, h.now)
        self.assertEqual([to for _, to in h.take()], [RELAY, OTHER_RELAY])

    def test_server_relays_nothing_but_bubbles(self) -> None:
        h = Harness()
        h.peers.from_udp(origin_indication(ipv4_to_int(RELAY[0]), RELAY[1]) + data(ME, source=V6HOST), *SERVER, h.now)
        self.assertEqual((h.sent, h.tun), ([], []))
        self.assertEqual(h.counters.drops(), {"from-server": 1})

    def test_only_well_formed_packets_count_as_hearing_from_the_server(self) -> None:
        h = Harness()
        h.peers.from_udp(origin_indication(ipv4_to_int(RELAY[0]), RELAY[1]) + data(ME, source=V6HOST), *SERVER, h.now)
        h.peers.from_udp(b"\x60garbage", *SERVER, h.now)
        bubble = origin_indication(ipv4_to_int("10.1.2.3"), 5000) + build_bubble(V6HOST, ME)
        h.peers.from_udp(bubble, *SERVER, h.now)
        self.assertEqual(h.heard, [])
        h.peers.from_udp(MIREDO["bubble-forwarded-with-origin"].payload, *SERVER, h.now + 1)
        self.assertEqual(h.heard, [h.now + 1])

    def test_bubble_from_elsewhere_with_origin_is_ignored(self) -> None:
        h = Harness()
        h.peers.from_udp(MIREDO["bubble-forwarded-with-origin"].payload, *OTHER_RELAY, h.now)
        self.assertEqual(h.sent, [])


class RelayTrustTests(SynchronousTestCase):
    def test_echo_through_the_server_then_direct_to_the_relay(self) -> None:
        h = Harness()
        first, second = data(size=10), data(size=20)
        h.peers.from_tun(first, h.now)
        h.peers.from_tun(second, h.now)
        echo = h.echo_test()
        self.assertEqual(len(h.sent), 1)  # one echo, both packets queued
        header = parse_header(echo)
        self.assertEqual((header.source, header.destination, header.next_header), (ME, V6HOST, NEXT_HEADER_ICMPV6))
        parsed = parse_echo(echo, header)
        assert parsed is not None
        self.assertEqual(len(parsed.data), 8)
        h.take()
        h.reply_to(echo)
        self.assertEqual(h.take(), [(first, RELAY), (second, RELAY)])
        self.assertEqual(h.tun, [])  # our own probe's reply is not the kernel's business
        third = data(size=30)
        h.peers.from_tun(third, h.now)
        self.assertEqual(h.take(), [(third, RELAY)])
        self.assertEqual(h.counters["client.relay_found"], 1)

    def test_echo_reply_from_the_server_acting_as_relay_is_accepted(self) -> None:
        h = Harness()
        packet = data(size=10)
        h.peers.from_tun(packet, h.now)
        echo = h.echo_test()
        h.take()
        h.reply_to(echo, via=SERVER)  # RFC 4380 §5.4.3: the server is also the relay
        self.assertEqual(h.take(), [(packet, SERVER)])
        self.assertEqual(h.counters["client.relay_found"], 1)
        self.assertEqual(h.counters.drops(), {})
        self.assertEqual(h.heard, [h.now])

    def test_echo_reply_with_other_data_is_not_trust(self) -> None:
        h = Harness()
        h.peers.from_tun(data(), h.now)
        echo = h.echo_test()
        h.take()
        h.reply_to(echo, data=b"guessed!")
        self.assertEqual(h.sent, [])
        peer = h.peers.table.get(V6HOST)
        assert peer is not None
        self.assertFalse(peer.trusted)

    def test_echo_payloads_differ_between_peers(self) -> None:
        h = Harness()
        h.peers.from_tun(data(V6HOST), h.now)
        h.peers.from_tun(data(ROUTER), h.now)
        payloads = [parse_echo(p, parse_header(p)) for p, _ in h.sent]
        self.assertNotEqual(payloads[0].data, payloads[1].data)  # type: ignore[union-attr]

    def test_icmp_error_quoting_our_echo_trusts_that_relay(self) -> None:
        h = Harness()
        packet = data()
        h.peers.from_tun(packet, h.now)
        echo = h.echo_test()
        h.take()
        error = build_unreachable(ROUTER, echo, ME, 0)
        h.peers.from_udp(error, *RELAY, h.now)
        self.assertEqual(h.take(), [(packet, RELAY)])
        self.assertEqual(h.counters["client.relay_found_by_error"], 1)

    def test_icmp_error_quoting_something_else_is_dropped(self) -> None:
        h = Harness()
        h.peers.from_tun(data(), h.now)
        h.take()
        other = build_echo(ME, V6HOST, 1, 1, b"notours!")
        h.peers.from_udp(build_unreachable(ROUTER, other, ME, 0), *RELAY, h.now)
        self.assertFalse(h.peers.table.get(V6HOST).trusted)  # type: ignore[union-attr]
        # Held like any packet from an unknown relay, while the router itself is tested.
        self.assertEqual(h.tun, [])
        self.assertEqual(parse_header(h.echo_test()).destination, ROUTER)

    def test_unanswered_echo_retried_then_unreachable(self) -> None:
        h = Harness()
        packet = data()
        h.peers.from_tun(packet, h.now)
        times = []
        for _ in range(6):
            if h.sent:
                times.append(h.now - 100)
                h.take()
            h.advance(2)
        self.assertEqual(times, [0.0, 2.0])  # one packet buys two rounds (RFC 4380 §5.2.6)
        self.assertEqual(len(h.tun), 1)
        error = parse_header(h.tun[0])
        self.assertEqual(error.destination, ME)
        self.assertEqual(h.tun[0][40], 1)  # destination unreachable
        self.assertEqual(quoted_packet(h.tun[0], error), packet)
        h.peers.from_tun(data(size=4), h.now)  # the next packet: the other two of 4 per 300 s
        h.advance(20)
        self.assertEqual(len(h.take()), 2)
        self.assertEqual(len(h.tun), 2)
        # Budget spent: the next packet is refused at once, no new probe.
        h.peers.from_tun(data(size=5), h.now)
        self.assertEqual(h.sent, [])
        self.assertEqual(len(h.tun), 3)


class TeredoPeerTests(SynchronousTestCase):
    def test_bubbles_direct_and_through_its_server_then_flush_in_order(self) -> None:
        h = Harness()
        packets = [data(PEER, size=n) for n in (1, 2, 3)]
        for packet in packets:
            h.peers.from_tun(packet, h.now)
        bubble = build_bubble(ME, PEER) + SOLICITATION  # RFC 6081 §5.7, on by default
        self.assertEqual(h.take(), [(bubble, PEER_MAPPING), (bubble, SERVER)])
        h.peers.from_udp(build_bubble(PEER, ME), *PEER_MAPPING, h.now)
        self.assertEqual(h.take(), [(p, PEER_MAPPING) for p in packets])
        self.assertEqual(h.tun, [])  # a bubble carries nothing for the kernel

    def test_packet_from_its_mapping_is_accepted_and_trusted(self) -> None:
        h = Harness()
        incoming = data(ME, source=PEER)
        h.peers.from_udp(incoming, *PEER_MAPPING, h.now)
        self.assertEqual(h.tun, [incoming])
        reply = data(PEER)
        h.peers.from_tun(reply, h.now)
        self.assertEqual(h.sent, [(reply, PEER_MAPPING)])

    def test_packet_from_another_mapping_is_dropped(self) -> None:
        h = Harness()
        h.peers.from_udp(data(ME, source=PEER), *OTHER_RELAY, h.now)
        self.assertEqual(h.tun, [])
        self.assertEqual(h.counters.drops(), {"teredo-mapping-mismatch": 1})

    def test_non_global_peer_is_never_contacted(self) -> None:
        h = Harness()
        local_peer = TeredoAddress(ipv4_to_int("198.18.0.1"), 0, 40000, ipv4_to_int("192.168.1.2")).pack()
        h.peers.from_tun(data(local_peer), h.now)
        self.assertEqual(h.sent, [])
        self.assertEqual(h.counters.drops(), {"tun.non-global-peer": 1})

    def test_peer_at_a_non_global_mapping_is_not_trusted(self) -> None:
        """RFC 4380 §5.2.4: its packets would make us send to an address we must not."""
        h = Harness()
        link_local = TeredoAddress(ipv4_to_int("198.18.0.1"), 0, 40000, ipv4_to_int("169.254.1.2")).pack()
        h.peers.from_udp(build_bubble(link_local, ME), "169.254.1.2", 40000, h.now)
        h.peers.from_udp(data(ME, source=link_local), "169.254.1.2", 40000, h.now)
        h.peers.from_tun(data(link_local), h.now)
        self.assertEqual((h.sent, h.tun), ([], []))
        self.assertEqual(h.counters.drops(), {"non-global-peer": 2, "tun.non-global-peer": 1})

    def test_queue_is_bounded(self) -> None:
        h = Harness()
        for _ in range(3):
            h.peers.from_tun(data(PEER, size=600), h.now)
        self.assertEqual(h.counters.drops(), {"queue-full": 1})
        self.assertLessEqual(h.peers.table.stats()["queued_bytes"], QUEUE_BYTES)


class IncomingTests(SynchronousTestCase):
    def test_native_host_through_unknown_relay_is_held_until_the_echo_confirms(self) -> None:
        h = Harness()
        incoming = data(ME, source=V6HOST)
        h.peers.from_udp(incoming, *RELAY, h.now)
        self.assertEqual(h.tun, [])
        echo = h.echo_test()
        h.reply_to(echo, via=RELAY)
        self.assertEqual(h.tun, [incoming])
        h.peers.from_udp(incoming, *RELAY, h.now)
        self.assertEqual(h.tun, [incoming, incoming])

    def test_held_packet_dropped_when_the_echo_returns_through_another_relay(self) -> None:
        h = Harness()
        h.peers.from_udp(data(ME, source=V6HOST), *OTHER_RELAY, h.now)
        h.reply_to(h.echo_test(), via=RELAY)
        self.assertEqual(h.tun, [])
        self.assertEqual(h.counters.drops(), {"held-from-other-relay": 1})
        self.assertEqual(h.peers.table.get(V6HOST).mapping, RELAY)  # type: ignore[union-attr]

    def test_a_trusted_native_peer_through_a_new_relay_rechecks_it_in_one_round_trip(self) -> None:
        # An anycast relay died: the host's packets now arrive through another relay box.
        h = Harness()
        h.peers.from_tun(data(), h.now)
        h.reply_to(h.echo_test())
        h.take()
        incoming = data(ME, source=V6HOST)
        h.peers.from_udp(incoming, *OTHER_RELAY, h.now)
        self.assertEqual(h.tun, [])  # held, not dropped
        echo = h.echo_test()  # re-checked through our server at once
        h.peers.from_tun(data(), h.now)
        self.assertEqual(h.take()[-1][1], RELAY)  # our packets keep the trusted relay meanwhile
        h.reply_to(echo, via=OTHER_RELAY)
        self.assertEqual(h.tun, [incoming])  # one round trip later: delivered ...
        h.peers.from_tun(data(), h.now)
        self.assertEqual(h.take()[-1][1], OTHER_RELAY)  # ... and the new relay carries ours
        self.assertEqual(h.counters.drops(), {})
        self.assertEqual(h.counters["client.relay_recheck"], 1)

    def test_a_silent_relay_of_a_flow_only_we_send_on_is_rechecked_and_replaced(self) -> None:
        # An anycast box died or was drained: its relay's unicast address swallows what we
        # send, and the native host never answers (a one-way stream), so nothing would
        # move us before the entry expires. The echo test names the surviving relay.
        h = Harness()
        h.peers.from_tun(data(), h.now)
        h.reply_to(h.echo_test())
        h.take()
        h.advance(RELAY_SILENCE - 0.1)
        h.peers.from_tun(data(), h.now)
        self.assertEqual([to for _, to in h.take()], [RELAY])  # heard from recently enough
        h.advance(0.1)
        h.peers.from_tun(data(), h.now)
        sent = h.take()
        self.assertEqual([to for _, to in sent], [RELAY, SERVER])  # still sent, and re-checked
        h.sent = sent[1:]
        echo = h.echo_test()
        h.peers.from_tun(data(), h.now)
        self.assertEqual(h.take()[-1][1], RELAY)  # one probe at a time; the trusted relay meanwhile
        h.reply_to(echo, via=OTHER_RELAY)
        h.peers.from_tun(data(), h.now)
        self.assertEqual(h.take(), [(data(), OTHER_RELAY)])
        self.assertEqual(h.tun, [])  # our probe's reply is not the kernel's business
        self.assertEqual(h.counters["client.relay_silent_recheck"], 1)
        self.assertEqual(h.counters.drops(), {})

    def test_a_silent_relay_that_still_answers_keeps_the_peer_and_the_fast_path(self) -> None:
        h = Harness()
        h.peers.from_tun(data(), h.now)
        h.reply_to(h.echo_test())
        h.advance(RELAY_SILENCE)
        h.peers.from_tun(data(), h.now)
        h.reply_to(h.echo_test(), via=RELAY)
        peer = h.peers.table.get(V6HOST)
        assert peer is not None
        self.assertEqual((peer.mapping, peer.candidate, peer.last_rx), (RELAY, None, h.now))
        self.assertEqual(h.tun, [])
        incoming = data(ME, source=V6HOST)
        self.assertFalse(h.peers.from_udp(incoming, *RELAY, h.now))  # the fast path again
        self.assertEqual(h.tun, [incoming])

    def test_silent_relay_rechecks_are_paced_per_peer_and_bounded_in_all(self) -> None:
        h = Harness()
        hosts = [IPv6Address(f"2001:db8:2::{n:x}").packed for n in range(1, 2 * RELAY_RECHECKS_PER_SECOND + 1)]
        for host in hosts:
            h.peers.from_tun(data(host), h.now)
            h.reply_to(h.echo_test())
        h.take()
        h.advance(RELAY_SILENCE)
        for _ in range(100):  # a one-way stream to every host, the relay silent
            for host in hosts:
                h.peers.from_tun(data(host), h.now)
        probes = [p for p, to in h.take() if to == SERVER]
        self.assertEqual(len(probes), RELAY_RECHECKS_PER_SECOND)
        h.advance(1.0)  # the global budget renews, but each probed peer waits 2 s (§5.2.6)
        for host in hosts:
            h.peers.from_tun(data(host), h.now)
        self.assertEqual(len([p for p, to in h.take() if to == SERVER]), RELAY_RECHECKS_PER_SECOND)
        for _ in range(10):  # unanswered: 4 probes per peer, then nothing for 300 s
            h.advance(2.0)
            for host in hosts[:1]:
                h.peers.from_tun(data(host), h.now)
        self.assertLessEqual(len([p for p, to in h.take() if to == SERVER]), 3)

    def test_a_teredo_peer_is_never_echo_probed(self) -> None:
        h = Harness()
        h.peers.from_udp(build_bubble(PEER, ME), *PEER_MAPPING, h.now)
        h.advance(RELAY_SILENCE * 3)
        h.peers.from_tun(data(PEER), h.now)
        self.assertEqual(h.take(), [(data(PEER), PEER_MAPPING)])

    def test_a_forged_packet_through_another_mapping_never_moves_the_trust(self) -> None:
        h = Harness()
        h.peers.from_tun(data(), h.now)
        h.reply_to(h.echo_test())
        h.take()
        h.peers.from_udp(data(ME, source=V6HOST), *OTHER_RELAY, h.now)
        h.reply_to(h.echo_test(), via=RELAY)  # the host really answers through its relay
        self.assertEqual(h.tun, [])
        self.assertEqual(h.counters.drops(), {"held-from-other-relay": 1})
        self.assertEqual(h.peers.table.get(V6HOST).mapping, RELAY)  # type: ignore[union-attr]
        h.take()
        for _ in range(10):  # a flood through the forger's mapping: paced echo tests, bounded hold
            h.peers.from_udp(data(ME, source=V6HOST, size=600), *OTHER_RELAY, h.now)
        self.assertLessEqual(len([p for p, to in h.take() if to != RELAY]), 1)
        self.assertLessEqual(h.peers.table.stats()["queued_bytes"], QUEUE_BYTES)

    def test_not_for_us(self) -> None:
        h = Harness()
        h.peers.from_udp(data(PEER, source=PEER), *PEER_MAPPING, h.now)
        self.assertEqual(h.counters.drops(), {"not-for-us": 1})

    def test_offline_drops_everything(self) -> None:
        h = Harness()
        h.peers.attach(None)
        h.peers.from_udp(data(ME, source=PEER), *PEER_MAPPING, h.now)
        h.peers.from_tun(data(), h.now)
        self.assertEqual(h.counters.drops(), {"offline": 1, "tun.offline": 1})

    def test_link_local_and_multicast_from_the_kernel_are_dropped(self) -> None:
        h = Harness()
        h.peers.from_tun(build_packet(IPv6Address("fe80::1").packed, V6HOST, 59, b""), h.now)
        h.peers.from_tun(data(IPv6Address("ff02::16").packed), h.now)
        self.assertEqual(h.counters.drops(), {"tun.source": 1, "tun.destination": 1})

    def test_new_address_forgets_the_peers(self) -> None:
        h = Harness()
        h.peers.from_tun(data(), h.now)
        h.reply_to(h.echo_test())
        h.peers.attach(PEER, ipv4_to_int(SERVER[0]))
        self.assertIsNone(h.peers.table.get(V6HOST))


class IcmpRateTests(SynchronousTestCase):
    def test_give_up_answers_the_newest_queued_packet_only(self) -> None:
        h = Harness()
        packets = [data(size=n) for n in (1, 2, 3)]
        for packet in packets:
            h.peers.from_tun(packet, h.now)
        h.advance(20)
        [error] = h.tun
        header = parse_header(error)
        self.assertEqual((header.destination, header.hop_limit, error[40]), (ME, 64, 1))
        self.assertEqual(quoted_packet(error, header), packets[-1])
        self.assertEqual(h.counters.drops(), {"peer-unreachable": 3})

    def test_at_most_ten_errors_a_second(self) -> None:
        h = Harness()
        for n in range(20):
            destination = IPv6Address(f"2001:db8:2::{n + 1:x}").packed
            h.peers.from_tun(data(destination), h.now)
        h.advance(8)
        self.assertEqual(len(h.tun), ICMP_ERRORS_PER_SECOND)
        self.assertEqual((h.counters["icmp.sent"], h.counters["icmp.rate-limited"]), (ICMP_ERRORS_PER_SECOND, 10))


class RobustnessTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=200), st.sampled_from([SERVER, RELAY, PEER_MAPPING]))
    def test_arbitrary_datagrams_never_raise(self, payload: bytes, source: tuple[str, int]) -> None:
        h = Harness()
        h.peers.from_udp(payload, *source, h.now)
        h.peers.from_udp(b"\x60" + payload, *source, h.now)
        h.peers.from_udp(origin_indication(1, 2) + b"\x60" + payload, *source, h.now)

    @settings(max_examples=400, deadline=None)
    @given(st.binary(min_size=40, max_size=200), st.sampled_from([V6HOST, PEER, ME]))
    def test_arbitrary_tun_packets_never_raise(self, payload: bytes, destination: bytes) -> None:
        h = Harness()
        h.peers.from_tun(payload, h.now)
        packet = b"\x60" + payload[1:8] + ME + destination + payload[40:]
        h.peers.from_tun(packet, h.now)
        h.advance(10)

    def test_parsed_datagram_with_trailer(self) -> None:
        h = Harness()
        incoming = data(ME, source=PEER)
        h.peers.from_udp(incoming + b"trailer", *PEER_MAPPING, h.now)
        self.assertEqual(h.tun, [incoming])
        self.assertEqual(parse_datagram(incoming).packet, incoming)
