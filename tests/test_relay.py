"""Tests for the relay role: the forwarding rules on RelayMachine, then RelayService in memory.

Everything runs without root: the machine is fed bytes and a clock; the service gets
twisted.pair.testing.MemoryIOSystem as its TUN, a fake netlink and a fake UDP port.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import CannotListenError
from twisted.pair import testing
from twisted.trial import unittest

from teredo_appliance.config_model import RelayConfig
from teredo_appliance.netlink import LinkError
from teredo_appliance.peers import ADDRESSES_PER_MAPPING, IDLE_TIMEOUT, QUEUE_BYTES
from teredo_appliance.ratelimit import ICMP_ERRORS_PER_SECOND
from teredo_appliance.roles.relay import NATIVE_RECHECK, RELAY_INTERFACE_ADDRESS, RelayService, kernel_error_source
from teredo_appliance.roles.relay_machine import RELAY_LINK_LOCAL, RelayMachine
from teredo_appliance.roles.tunneled import REPAIR_RETRY
from teredo_appliance.stats import Counters
from teredo_appliance.wire.address import TeredoAddress, ipv4_to_int
from teredo_appliance.wire.ipv6 import (
    HEADER_LENGTH,
    ICMPV6_DEST_UNREACHABLE,
    ICMPV6_PACKET_TOO_BIG,
    build_echo,
    build_packet,
    checksum_ok,
    parse_header,
    quoted_packet,
)
from teredo_appliance.wire.teredo import build_bubble, is_bubble, origin_indication, parse_datagram
from tests import vectors
from tests.fakes import InMemoryRelayHost, kernel_sends, tun_device

PREFIX = IPv6Network("2001::/32")
ROUTE_ADDED = ("add_route", PREFIX, 1024, 4)  # the default metric and protocol (static)
ROUTE_REMOVED = ("remove_route", PREFIX, 1024, 4)
SERVER = "198.18.0.1"
PEER_IP, PEER_PORT = "198.18.0.100", 52732
PEER_MAPPING = (PEER_IP, PEER_PORT)
PEER = TeredoAddress(ipv4_to_int(SERVER), 0x1C6B, PEER_PORT, ipv4_to_int(PEER_IP)).pack()
NATIVE = IPv6Address("2001:db8:1::2").packed
ERROR_SOURCE = IPv6Address("2001:db8:1::1").packed
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def teredo(mapped_ip: str = PEER_IP, port: int = PEER_PORT, server: str = SERVER, flags: int = 0x1C6B) -> bytes:
    return TeredoAddress(ipv4_to_int(server), flags, port, ipv4_to_int(mapped_ip)).pack()


def echo(src: bytes, dst: bytes, sequence: int = 1, size: int = 8) -> bytes:
    return build_echo(src, dst, 0x1512, sequence, bytes(size))


class MachineHarness(unittest.SynchronousTestCase):
    """A RelayMachine whose UDP sends and TUN writes land in lists."""

    max_peers = 100
    cone = False

    def setUp(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.written: list[bytes] = []
        self.counters = Counters()
        self.machine = RelayMachine(
            PREFIX,
            1280,
            self.max_peers,
            lambda payload, mapping: self.sent.append((payload, mapping)),
            self.written.append,
            self.counters,
            cone=self.cone,
            error_source=lambda destination: ERROR_SOURCE,
        )

    def trust(self, peer: bytes = PEER, mapping: tuple[str, int] = PEER_MAPPING, now: float = 0.0) -> None:
        """The peer bubbles to us from its mapping (how a Miredo client answers ours)."""
        self.machine.from_udp(build_bubble(peer, RELAY_LINK_LOCAL), mapping, now)

    def drops(self) -> dict[str, int]:
        return self.counters.drops()


class IPv6ToTeredoTests(MachineHarness):
    """RFC 4380 §5.4.1: packets from the TUN towards Teredo peers."""

    def test_unknown_peer_is_queued_and_bubbled_indirectly_and_directly(self) -> None:
        wake = self.machine.from_tun(echo(NATIVE, PEER), 10.0)
        bubble = build_bubble(RELAY_LINK_LOCAL, PEER)
        self.assertEqual(self.sent, [(bubble, (SERVER, 3544)), (bubble, PEER_MAPPING)])
        self.assertEqual(self.written, [])
        self.assertEqual(wake, 12.0)  # the first retry
        self.assertEqual(self.machine.peers.stats()["queued_bytes"], len(echo(NATIVE, PEER)))

    def test_bubble_matches_miredo_relay_layout(self) -> None:
        """Same shape as Miredo's relay bubble: bare header, next header 59, hop limit 0."""
        self.machine.from_tun(echo(NATIVE, PEER), 0.0)
        ours, miredo = self.sent[0][0], vectors.MIREDO["bubble-relay-to-server"].payload
        self.assertEqual(ours[:8], miredo[:8])
        self.assertEqual(ours[24:], miredo[24:])  # to the same client
        self.assertEqual(ours[8:24], RELAY_LINK_LOCAL)

    def test_queue_flushed_in_original_order_when_peer_bubbles_back(self) -> None:
        packets = [echo(NATIVE, PEER, sequence) for sequence in range(5)]
        for packet in packets:
            self.machine.from_tun(packet, 0.0)
        self.sent.clear()
        self.trust(now=0.5)
        self.assertEqual(self.sent, [(packet, PEER_MAPPING) for packet in packets])
        self.assertEqual(self.written, [])  # a bubble is not for the kernel
        self.assertEqual(self.machine.peers.stats()["queued_bytes"], 0)
        self.assertEqual(self.counters["bubbles.received"], 1)

    def test_miredo_clients_reply_bubble_trusts_it(self) -> None:
        """The Miredo capture: the client answers to the link-local bubble source."""
        peer = IPv6Address("2001:0:c612:1:1c6b:3203:39ed:ff9b").packed
        self.machine.from_tun(echo(NATIVE, peer), 0.0)
        self.machine.from_udp(vectors.MIREDO["bubble-client-to-relay"].payload, PEER_MAPPING, 0.3)
        self.assertEqual(self.sent[-1], (echo(NATIVE, peer), PEER_MAPPING))
        self.assertTrue(self.machine.peers.get(peer).trusted)

    def test_data_packet_from_peer_also_trusts_and_flushes(self) -> None:
        self.machine.from_tun(echo(NATIVE, PEER, 1), 0.0)
        reply = echo(PEER, NATIVE, 2)
        self.machine.from_udp(reply, PEER_MAPPING, 0.2)
        self.assertEqual(self.sent[-1], (echo(NATIVE, PEER, 1), PEER_MAPPING))
        self.assertEqual(self.written, [reply])

    def test_trusted_peer_gets_packets_directly(self) -> None:
        self.trust()
        packet = echo(NATIVE, PEER)
        self.assertIsNone(self.machine.from_tun(packet, 1.0))
        self.assertEqual(self.sent, [(packet, PEER_MAPPING)])

    def test_answer_from_another_port_does_not_trust(self) -> None:
        self.machine.from_tun(echo(NATIVE, PEER), 0.0)
        self.sent.clear()
        self.trust(mapping=(PEER_IP, PEER_PORT + 1))
        self.assertEqual(self.sent, [])
        self.assertFalse(self.machine.peers.get(PEER).trusted)
        self.assertEqual(self.drops(), {"udp.source-mismatch": 1})

    def test_queue_bounded_in_bytes_per_peer(self) -> None:
        packet = echo(NATIVE, PEER, size=400)  # 456 bytes: two fit in 1280
        for _ in range(4):
            self.machine.from_tun(packet, 0.0)
        self.assertEqual(self.machine.peers.stats()["queued_bytes"], 2 * len(packet))
        self.assertLessEqual(self.machine.peers.stats()["queued_bytes"], QUEUE_BYTES)
        self.assertEqual(self.drops(), {"tun.queue-full": 2})

    def test_one_packet_costs_two_rounds_of_bubbles(self) -> None:
        """RFC 4380 §5.2.6: a packet towards a silent peer buys a round and one retry, not 8 bubbles."""
        packets = [echo(NATIVE, PEER, sequence) for sequence in range(3)]  # a burst counts once
        for packet in packets:
            self.machine.from_tun(packet, 0.0)
        self.assertEqual(self.machine.on_timer(2.0), 4.0)
        self.assertEqual(self.counters["bubbles.sent"], 4)  # 2 times indirect + direct
        self.assertEqual(self.written, [])
        self.machine.on_timer(4.0)
        for now in range(6, 40, 2):
            self.machine.on_timer(float(now))
        self.assertEqual(self.counters["bubbles.sent"], 4)
        self.assertEqual(len(self.sent), 4)
        self.assertEqual(self.drops(), {"tun.peer-unreachable": 3})
        self.assertEqual(self.machine.peers.stats()["queued_bytes"], 0)

    def test_each_later_packet_buys_one_more_round(self) -> None:
        self.machine.from_tun(echo(NATIVE, PEER, 1), 0.0)
        self.machine.on_timer(2.0)  # second round
        self.machine.from_tun(echo(NATIVE, PEER, 2), 3.0)  # a retransmission: one round more
        for now in range(4, 40, 2):
            self.machine.on_timer(float(now))
        self.assertEqual(self.counters["bubbles.sent"], 6)
        self.assertEqual(self.drops(), {"tun.peer-unreachable": 2})

    def test_relay_wide_bubble_rate_is_capped(self) -> None:
        """One packet to each of 100 silent peers cannot make the relay bubble 400 times a second."""
        machine = RelayMachine(PREFIX, 1280, 1000, lambda *sent: self.sent.append(sent), self.written.append,
                               self.counters, bubbles_per_second=50)
        for n in range(100):
            machine.from_tun(echo(NATIVE, teredo(port=1000 + n)), 0.5)
        self.assertEqual(len(self.sent), 50)
        self.assertEqual(self.counters["bubbles.sent"], 50)
        self.assertEqual(self.counters["bubbles.rate-limited"], 150)
        self.assertEqual(self.counters["queued"], 100)  # the packets wait for the next round
        machine.on_timer(2.5)
        self.assertEqual(len(self.sent), 100)

    def test_give_up_answers_the_newest_queued_packet_only(self) -> None:
        """One destination unreachable per failed discovery, not one per queued packet."""
        packets = [echo(NATIVE, PEER, sequence) for sequence in range(3)]
        for packet in packets:
            self.machine.from_tun(packet, 0.0)
        for now in range(2, 20, 2):
            self.machine.on_timer(float(now))
        [error] = self.written
        header = parse_header(error)
        self.assertEqual(error[HEADER_LENGTH : HEADER_LENGTH + 2], bytes((ICMPV6_DEST_UNREACHABLE, 3)))
        self.assertEqual((header.source, header.destination, header.hop_limit), (ERROR_SOURCE, NATIVE, 64))
        self.assertEqual(quoted_packet(error, header), packets[-1])
        self.assertTrue(checksum_ok(error, header))
        self.assertEqual(self.drops(), {"tun.peer-unreachable": 3})

    def test_no_retry_before_2s(self) -> None:
        self.machine.from_tun(echo(NATIVE, PEER), 0.0)
        self.machine.on_timer(1.9)
        self.assertEqual(len(self.sent), 2)

    def test_more_packets_during_discovery_send_no_more_bubbles(self) -> None:
        """RFC 4380 §5.2.6: bubbles at least 2 s apart however many packets are waiting."""
        for now in (0.0, 0.5, 1.0, 1.5, 1.99):
            self.machine.from_tun(echo(NATIVE, PEER, size=0), now)
        self.assertEqual(len(self.sent), 2)

    def test_peer_that_never_answered_is_refused_at_once(self) -> None:
        """After 4 unanswered bubbles (RFC 4380 §5.2.6) no bubble until the entry is gone."""
        self.machine.from_tun(echo(NATIVE, PEER), 0.0)
        for now in (2.0, 4.0, 6.0, 8.0):
            self.machine.on_timer(now)
            if now < 6.0:
                self.machine.from_tun(echo(NATIVE, PEER), now + 1.0)  # retransmissions: 4 rounds
        self.assertEqual(self.counters["bubbles.sent"], 8)
        self.sent.clear()
        self.written.clear()
        self.machine.from_tun(echo(NATIVE, PEER, 9), 10.0)
        self.assertEqual(self.sent, [])
        self.assertEqual(len(self.written), 1)  # unreachable right away
        self.assertEqual(self.written[0][HEADER_LENGTH + 1], 3)

    def test_unreachable_rate_limited(self) -> None:
        peers = [teredo(port=1000 + n) for n in range(ICMP_ERRORS_PER_SECOND + 5)]
        for peer in peers:
            self.machine.from_tun(echo(NATIVE, peer), 0.0)
        for now in (2.0, 4.0, 6.0, 8.0):
            self.machine.on_timer(now)
        self.assertEqual(len(self.written), ICMP_ERRORS_PER_SECOND)
        self.assertEqual(self.counters["icmp.rate-limited"], 5)
        not_teredo = echo(NATIVE, IPv6Address("2001:db9::1").packed)
        self.machine.from_tun(not_teredo, 4.5)
        self.assertEqual(len(self.written), ICMP_ERRORS_PER_SECOND)  # same second
        self.machine.from_tun(not_teredo, 5.0)
        self.assertEqual(len(self.written), ICMP_ERRORS_PER_SECOND + 1)

    def test_no_error_about_an_error(self) -> None:
        """RFC 4443 §2.4 (e): an ICMPv6 error that cannot be delivered is dropped silently."""
        error = build_packet(NATIVE, PEER, 58, bytes((1, 3, 0, 0)) + bytes(4 + 48))
        self.machine.from_tun(error, 0.0)
        for now in (2.0, 4.0, 6.0, 8.0):
            self.machine.on_timer(now)
        self.assertEqual(self.written, [])
        self.assertEqual(self.drops(), {"tun.peer-unreachable": 1})

    def test_non_teredo_destination_dropped_with_unreachable(self) -> None:
        self.machine.from_tun(echo(NATIVE, IPv6Address("2001:db9::1").packed), 0.0)
        self.assertEqual(self.sent, [])
        self.assertEqual(self.drops(), {"tun.not-teredo": 1})
        self.assertEqual(self.written[0][HEADER_LENGTH : HEADER_LENGTH + 2], bytes((ICMPV6_DEST_UNREACHABLE, 0)))

    def test_non_global_mapping_or_server_dropped_silently(self) -> None:
        for destination in (teredo(mapped_ip="10.0.0.1"), teredo(server="127.0.0.1"), teredo(mapped_ip="224.0.0.1")):
            self.machine.from_tun(echo(NATIVE, destination), 0.0)
        self.assertEqual((self.sent, self.written), ([], []))
        self.assertEqual(self.drops(), {"tun.not-global": 3})
        self.assertEqual(len(self.machine.peers), 0)

    def test_multicast_from_the_kernel_dropped(self) -> None:
        self.machine.from_tun(build_packet(RELAY_LINK_LOCAL, bytes.fromhex("ff02" + "00" * 13 + "16"), 58, bytes(8)), 0)
        self.assertEqual((self.sent, self.written), ([], []))
        self.assertEqual(self.drops(), {"tun.multicast": 1})

    def test_too_big_answered_with_packet_too_big(self) -> None:
        self.trust()
        big = echo(NATIVE, PEER, size=1281 - 48)
        self.machine.from_tun(big, 1.0)
        self.assertEqual(self.sent, [])
        [error] = self.written
        header = parse_header(error)
        self.assertEqual(error[HEADER_LENGTH], ICMPV6_PACKET_TOO_BIG)
        self.assertEqual(struct.unpack_from("!I", error, HEADER_LENGTH + 4)[0], 1280)
        self.assertEqual(header.destination, NATIVE)
        self.assertLessEqual(len(error), 1280)
        self.assertEqual(self.drops(), {"tun.too-big": 1})

    def test_malformed_packet_from_tun_counted(self) -> None:
        self.machine.from_tun(echo(NATIVE, PEER)[:-1], 0.0)
        self.assertEqual(self.drops(), {"tun.ipv6-truncated": 1})


class ConeRelayTests(MachineHarness):
    cone = True

    def test_cone_relay_sends_only_the_indirect_bubble(self) -> None:
        self.machine.from_tun(echo(NATIVE, PEER), 0.0)
        self.assertEqual(self.sent, [(build_bubble(RELAY_LINK_LOCAL, PEER), (SERVER, 3544))])


class TeredoToIPv6Tests(MachineHarness):
    """RFC 4380 §5.4.2: datagrams from Teredo peers towards native IPv6."""

    def test_source_embedding_outer_mapping_accepted_and_trusted(self) -> None:
        packet = echo(PEER, NATIVE)
        self.machine.from_udp(packet, PEER_MAPPING, 0.0)
        self.assertEqual(self.written, [packet])
        self.assertTrue(self.machine.peers.get(PEER).trusted)
        self.machine.from_tun(echo(NATIVE, PEER), 0.1)
        self.assertEqual(self.sent, [(echo(NATIVE, PEER), PEER_MAPPING)])  # no bubble needed

    def test_miredo_client_data_packet_forwarded(self) -> None:
        data = vectors.MIREDO["data-client-to-v6host"].payload
        self.machine.from_udp(data, PEER_MAPPING, 0.0)
        self.assertEqual(self.written, [data])

    def test_trusted_peer_at_other_mapping_dropped(self) -> None:
        self.trust()
        self.machine.from_udp(echo(PEER, NATIVE), ("198.18.0.99", PEER_PORT), 0.0)
        self.machine.from_udp(echo(PEER, NATIVE), (PEER_IP, 1), 0.0)
        self.assertEqual(self.written, [])
        self.assertEqual(self.drops(), {"udp.source-mismatch": 2})

    def test_non_teredo_source_dropped(self) -> None:
        self.machine.from_udp(echo(NATIVE, IPv6Address("2001:db8:1::3").packed), PEER_MAPPING, 0.0)
        self.assertEqual(self.written, [])
        self.assertEqual(self.drops(), {"udp.source-not-teredo": 1})
        self.assertEqual(len(self.machine.peers), 0)

    def test_bad_destinations_dropped_by_reason(self) -> None:
        self.trust()
        for destination in ("ff02::1", "fe80::1", "2001:0:c612:1::1"):
            self.machine.from_udp(echo(PEER, IPv6Address(destination).packed), PEER_MAPPING, 1.0)
        self.assertEqual(self.written, [])
        self.assertEqual(
            self.drops(),
            {"udp.multicast-destination": 1, "udp.link-local-destination": 1, "udp.teredo-destination": 1},
        )

    def test_only_served_destinations_reached(self) -> None:
        """RFC 4380 §5.4.2, RFC 6324: ULA, site-local, v4-mapped, loopback, 6to4... never."""
        self.trust()
        refused = ["fc00::1", "fd12:3456::1", "fec0::1", "::ffff:198.18.0.5", "::1", "::", "2002:c612:5::1",
                   "4000::1", "::5"]
        for destination in refused:
            self.machine.from_udp(echo(PEER, IPv6Address(destination).packed), PEER_MAPPING, 1.0)
        self.assertEqual(self.written, [])
        self.assertEqual(self.drops(), {"udp.unserved-destination": len(refused)})
        # The lab's native host is in the documentation /32, a different /32 than Teredo's.
        self.assertFalse(IPv6Network("2001:db8::/32").subnet_of(IPv6Network("2001::/32")))
        for destination in ("2001:db8:1::2", "2a00:1450::1", "3fff::1", "2001:4860::8888"):
            self.machine.from_udp(echo(PEER, IPv6Address(destination).packed), PEER_MAPPING, 1.0)
        self.assertEqual(len(self.written), 4)

    def test_served_prefixes_narrow_but_never_widen_past_the_fixed_list(self) -> None:
        for served, allowed, refused in (
            ([IPv6Network("2001:db8:1::/48")], "2001:db8:1::2", "2001:db8:2::1"),
            ([IPv6Network("::/0")], "4000::1", "fd00::1"),
        ):
            written: list[bytes] = []
            machine = RelayMachine(PREFIX, 1280, 8, lambda *sent: None, written.append, Counters(),
                                   served_prefixes=served)
            machine.from_udp(build_bubble(PEER, RELAY_LINK_LOCAL), PEER_MAPPING, 0.0)
            for destination in (allowed, refused):
                machine.from_udp(echo(PEER, IPv6Address(destination).packed), PEER_MAPPING, 1.0)
            self.assertEqual(written, [echo(PEER, IPv6Address(allowed).packed)])
            self.assertEqual(machine.counters.drops(), {"udp.unserved-destination": 1})

    def test_malformed_datagrams_dropped_by_reason(self) -> None:
        packet = echo(PEER, NATIVE)
        for data in (b"", b"\x00", packet[:39], b"\x50" + packet[1:], packet[:-1], b"\x00\x01\x00\x00", b"\x00\x00"):
            self.machine.from_udp(data, PEER_MAPPING, 0.0)
        self.assertEqual(self.written, [])
        self.assertEqual(
            self.drops(),
            {
                "udp.ipv6-short": 3,
                "udp.not-ipv6": 1,
                "udp.ipv6-truncated": 1,
                "udp.auth-truncated": 1,
                "udp.origin-truncated": 1,
            },
        )

    def test_trailer_bytes_removed_before_the_kernel(self) -> None:
        packet = echo(PEER, NATIVE)
        self.machine.from_udp(packet + b"\x01\x02\x03", PEER_MAPPING, 0.0)
        self.assertEqual(self.written, [packet])

    def test_headers_in_front_of_the_packet_are_skipped(self) -> None:
        packet = echo(PEER, NATIVE)
        self.machine.from_udp(origin_indication(ipv4_to_int(PEER_IP), PEER_PORT) + packet, PEER_MAPPING, 0.0)
        self.assertEqual(self.written, [packet])

    def test_non_global_mapping_is_never_trusted_nor_sent_to(self) -> None:
        """RFC 4380 §5.4.1 MUST: no packet or bubble to a mapping that is not global."""
        sources = [(teredo(mapped_ip=ip, port=4000), (ip, 4000)) for ip in ("169.254.7.8", "10.0.0.5", "192.168.1.1")]
        sources.append((teredo(server="172.16.0.1"), PEER_MAPPING))  # a server no one can reach
        for source, mapping in sources:
            self.machine.from_udp(build_bubble(source, RELAY_LINK_LOCAL), mapping, 0.0)
            self.machine.from_udp(echo(source, NATIVE), mapping, 0.0)
            self.machine.from_tun(echo(NATIVE, source), 0.1)
        self.machine.on_timer(2.0)
        self.assertEqual((self.sent, self.written), ([], []))
        self.assertEqual(len(self.machine.peers), 0)
        self.assertEqual(self.drops(), {"udp.non-global-source": 8, "tun.not-global": 4})

    def test_reachable_ipv4_widens_for_tests_only(self) -> None:
        machine = RelayMachine(PREFIX, 1280, 8, lambda *sent: self.sent.append(sent), self.written.append,
                               self.counters, reachable_ipv4=lambda ip: True)
        lan = teredo(mapped_ip="10.0.0.5", port=4000)
        machine.from_udp(echo(lan, NATIVE), ("10.0.0.5", 4000), 0.0)
        machine.from_tun(echo(NATIVE, lan), 0.1)
        self.assertEqual(self.sent, [(echo(NATIVE, lan), ("10.0.0.5", 4000))])

    def test_bubble_from_unknown_peer_creates_trusted_entry_only(self) -> None:
        self.trust()
        self.assertEqual((self.written, self.sent), ([], []))
        self.assertEqual(self.machine.peers.stats()["trusted"], 1)


class PeerTableBoundsTests(MachineHarness):
    max_peers = 3

    def test_idle_peer_expires_after_30s(self) -> None:
        self.trust(now=0.0)
        self.assertEqual(self.machine.next_deadline(), IDLE_TIMEOUT)
        self.machine.on_timer(IDLE_TIMEOUT - 0.1)
        self.assertEqual(len(self.machine.peers), 1)
        self.assertIsNone(self.machine.on_timer(IDLE_TIMEOUT))
        self.assertEqual(len(self.machine.peers), 0)
        self.machine.from_tun(echo(NATIVE, PEER), IDLE_TIMEOUT + 1)  # rediscovered
        self.assertEqual(len(self.sent), 2)

    def test_traffic_from_peer_keeps_it(self) -> None:
        self.trust(now=0.0)
        self.machine.from_udp(echo(PEER, NATIVE), PEER_MAPPING, 20.0)
        self.machine.on_timer(IDLE_TIMEOUT)
        self.assertEqual(len(self.machine.peers), 1)

    def test_full_table_evicts_untrusted_before_trusted(self) -> None:
        self.trust(now=0.0)
        others = [teredo(port=2000 + n) for n in range(4)]
        for n, peer in enumerate(others):
            self.machine.from_tun(echo(NATIVE, peer), 1.0 + n)
        self.assertEqual(len(self.machine.peers), 3)
        self.assertIsNotNone(self.machine.peers.get(PEER))
        self.assertEqual([self.machine.peers.get(p) is not None for p in others], [False, False, True, True])
        self.assertEqual(self.machine.peers.stats()["evicted"], 2)


class AddressesPerMappingTests(MachineHarness):
    def test_forged_sources_from_one_mapping_do_not_push_out_real_peers(self) -> None:
        """One host can mint endless valid Teredo sources embedding its own IPv4:port."""
        self.trust(now=0.0)
        attacker = ("198.18.0.66", 4444)
        for n in range(20):
            forged = teredo(mapped_ip=attacker[0], port=attacker[1], server=f"198.18.1.{n + 1}")
            self.machine.from_udp(echo(forged, NATIVE), attacker, 1.0)
        self.assertEqual(len(self.written), 20)  # each packet itself is legitimate and forwarded
        self.assertEqual(len(self.machine.peers), 1 + ADDRESSES_PER_MAPPING)
        self.assertTrue(self.machine.peers.get(PEER).trusted)
        self.assertEqual(self.machine.peers.stats()["superseded"], 20 - ADDRESSES_PER_MAPPING)

    def test_a_restarted_client_on_the_same_port_does_not_flap(self) -> None:
        """Its old and new addresses both stay trusted: no bubble round at each switch."""
        restarted = teredo(flags=0x0400)
        for peer in (PEER, restarted):
            self.machine.from_udp(echo(peer, NATIVE), PEER_MAPPING, 0.0)
        for now, peer in enumerate((PEER, restarted, PEER, restarted)):
            self.machine.from_tun(echo(NATIVE, peer), float(now))
        self.assertEqual(self.counters["bubbles.sent"], 0)
        self.assertEqual(self.sent, [(echo(NATIVE, peer), PEER_MAPPING) for peer in (PEER, restarted) * 2])


@st.composite
def teredo_datagrams(draw: Any) -> bytes:
    """Mostly plausible Teredo payloads (so the deep paths run), some pure noise."""
    noise = draw(st.binary(max_size=1400))
    if draw(st.booleans()):
        return noise
    payload = draw(st.binary(max_size=200))
    src = draw(st.sampled_from([PEER, NATIVE, RELAY_LINK_LOCAL, bytes(16)]))
    dst = draw(st.sampled_from([NATIVE, PEER, RELAY_LINK_LOCAL, bytes.fromhex("ff02" + "00" * 13 + "01"),
                                IPv6Address("fd00::1").packed, IPv6Address("2002::1").packed]))
    packet = build_packet(src, dst, draw(st.sampled_from([58, 59, 6, 17])), payload)
    if draw(st.booleans()):
        packet = packet[: draw(st.integers(0, len(packet)))] + noise[:8]
    prefix = draw(st.sampled_from([b"", origin_indication(1, 2), b"\x00\x01\x00\x00" + bytes(9)]))
    return prefix + packet


class NeverRaisesTests(MachineHarness):
    """Arbitrary input is a counted drop or a forward, never an exception."""

    @settings(max_examples=400, deadline=None)
    @given(st.lists(teredo_datagrams(), max_size=5), st.booleans())
    def test_arbitrary_datagrams(self, datagrams: list[bytes], trusted: bool) -> None:
        self.setUp()
        if trusted:
            self.trust()
        for data in datagrams:
            self.machine.from_udp(data, PEER_MAPPING, 1.0)
        # Each datagram is forwarded, a bubble, or a drop with a reason: exactly one.
        outcomes = self.counters["to_ipv6"] + self.counters["bubbles.received"] + sum(self.drops().values())
        self.assertEqual(outcomes, len(datagrams) + trusted)
        self.machine.on_timer(100.0)

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.one_of(st.binary(max_size=1400), teredo_datagrams()), max_size=5))
    def test_arbitrary_tun_packets(self, packets: list[bytes]) -> None:
        self.setUp()
        for now, packet in enumerate(packets):
            self.machine.from_tun(packet, float(now))
        self.assertEqual(self.counters["queued"] + sum(self.drops().values()), len(packets))
        for now in range(2, 12, 2):
            self.machine.on_timer(float(now))

    @settings(max_examples=300, deadline=None)
    @given(teredo_datagrams())
    def test_fast_path_agrees_with_slow_path(self, data: bytes) -> None:
        """The shortcut for trusted peers forwards exactly what the full rules forward."""
        self.setUp()
        self.trust()
        self.machine.from_udp(data, PEER_MAPPING, 1.0)
        fast = (list(self.written), list(self.sent))
        self.setUp()
        self.trust()
        self.machine._from_udp_slow(data, PEER_MAPPING, 1.0)
        self.assertEqual(fast, (self.written, self.sent))



class BatchVerdictTests(unittest.SynchronousTestCase):
    """A read's datagrams handed over at once get exactly the verdicts they get one by one,
    whatever mix of runs, strangers, wrong mappings and junk (the batch shares lookups)."""

    STRANGER = teredo(port=2000)

    def machine(self) -> tuple[RelayMachine, list[tuple[str, bytes, Any]], Counters]:
        out: list[tuple[str, bytes, Any]] = []
        counters = Counters()
        machine = RelayMachine(PREFIX, 1280, 2, lambda payload, mapping: out.append(("send", payload, mapping)),
                               lambda packet: out.append(("write", packet, None)), counters,
                               reachable_ipv4=lambda ip: True)
        machine.from_udp(build_bubble(PEER, RELAY_LINK_LOCAL), PEER_MAPPING, 0.0)
        machine.from_tun(echo(NATIVE, self.STRANGER), 0.0)  # queued until it vouches for itself
        return machine, out, counters

    KINDS = {
        "run": (PEER, NATIVE, PEER_MAPPING),  # the fast path
        "elsewhere": (PEER, NATIVE, (PEER_IP, 2000)),  # the same addresses from another mapping
        "to-teredo": (PEER, PEER, PEER_MAPPING),
        "stranger": (STRANGER, NATIVE, (PEER_IP, 2000)),  # vouches for itself: trusted, queue flushed
        "newcomer": (teredo(port=2001), NATIVE, (PEER_IP, 2001)),  # trusting it may evict a peer
        "forged": (teredo(port=2001), NATIVE, PEER_MAPPING),
    }

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["run", "run", "run", "truncated", "junk", *KINDS]),
                              st.integers(0, 40), teredo_datagrams()), max_size=30))
    def test_batch_equals_one_by_one(self, plan: list[tuple[str, int, bytes]]) -> None:
        batch = []
        for kind, size, junk in plan:
            if kind == "junk":
                batch.append((junk, PEER_MAPPING))
            elif kind == "truncated":
                batch.append((echo(PEER, NATIVE, size=size)[:-1], PEER_MAPPING))
            else:
                source, destination, mapping = self.KINDS[kind]
                batch.append((echo(source, destination, size=size), mapping))
        one, one_out, one_counters = self.machine()
        wakes = [w for w in (one.from_udp(data, source, 5.0) for data, source in batch) if w is not None]
        many, many_out, many_counters = self.machine()
        self.assertEqual(many.from_udp_batch(batch, 5.0), min(wakes, default=None))
        self.assertEqual(many_out, one_out)
        self.assertEqual(many_counters, one_counters)
        self.assertEqual(many.snapshot(5.0), one.snapshot(5.0))


# -- the service, in memory ---------------------------------------------------------------


class RelayServiceTests(InMemoryRelayHost, unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.set_up_host()
        self.config = RelayConfig(interface="trelay", bind_address=IPv4Address("198.18.0.10"), bind_port=3544)
        self.service = RelayService(
            self.config,
            reactor=self.reactor,
            tun_system=self.system,
            link_factory=self.link,
            link_watch=self.watch,
            error_source=lambda destination: ERROR_SOURCE,
        )

    def device(self) -> testing.Tunnel:
        return tun_device(self.system)

    def from_kernel(self, *packets: bytes) -> None:
        kernel_sends(self.system, self.reactor, *packets)

    def udp_sent(self) -> list[tuple[bytes, Any]]:
        return self.service.udp.transport.written

    def test_failed_start_is_stopped_only_once_its_device_is_gone(self) -> None:
        def absent(*args: Any, **kwargs: Any) -> Any:
            raise CannotListenError("198.18.0.10", 3544, OSError(errno.EADDRNOTAVAIL, "Cannot assign"))

        self.reactor.listenUDP = absent  # type: ignore[method-assign]
        self.assertRaises(CannotListenError, self.service.privilegedStartService)
        stopped = self.service.stopService()  # the appliance waits on this before restoring the old relay
        self.assertNoResult(stopped)
        self.reactor.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(self.system._openFiles, {})

    def test_status_reports_the_tuns_kernel_drops(self) -> None:
        self.assertIsNone(self.service.status()["tun_kernel_drops"])  # no device yet
        self.start()
        self.links[-1].drops = {"tx_dropped": 7, "rx_dropped": 1}  # the kernel's queue towards us overflowed
        self.assertEqual(self.service.status()["tun_kernel_drops"], {"tx_dropped": 7, "rx_dropped": 1})
        self.failing.add("drop_counts")
        self.assertIsNone(self.service.status()["tun_kernel_drops"])  # unreadable: said so, not raised

    def test_tun_deleted_from_outside_is_reported_then_recreated(self) -> None:
        self.start()
        self.assertEqual(self.watches[-1].started, 1)
        self.assertEqual(self.service.status()["health"], "ok")
        self.calls.clear()
        self.links[-1].gone = True  # ip link del trelay
        self.watches[-1].on_change()
        status = self.service.status()
        name = self.service.tunnel.name  # as the kernel named it ("trelay" padded, on the in-memory TUN)
        self.assertEqual((status["running"], status["health"]), (True, f"degraded: TUN {name} missing"))
        self.reactor.advance(0)  # the dead descriptor closes, then the device is made anew
        self.assertEqual(
            self.calls,
            [ROUTE_REMOVED, ("prepare",), ("up", 1280), ("add_address", RELAY_INTERFACE_ADDRESS), ROUTE_ADDED],
        )
        self.assertEqual(self.service.status()["health"], "ok")
        self.assertEqual(self.service.counters["tun_repaired"], 1)
        self.assertEqual(len(self.system._openFiles), 1)
        self.from_kernel(echo(NATIVE, PEER))  # the new device carries packets to the machine
        self.assertEqual(self.service.counters.drops(), {})
        self.assertEqual(len(self.udp_sent()), 2)  # direct and indirect bubble towards the peer

    def test_link_set_down_and_route_removed_are_restored_in_place(self) -> None:
        self.start()
        link = self.links[-1]
        self.calls.clear()
        link.up_now = False  # ip link set trelay down: the kernel drops its IPv6 addresses and routes
        link.addresses.clear()
        link.routes.clear()
        self.watches[-1].on_change()
        self.assertEqual(
            self.calls,
            [ROUTE_REMOVED, ("up", 1280), ("add_address", RELAY_INTERFACE_ADDRESS), ROUTE_ADDED],
        )
        self.assertEqual(self.service.status()["health"], "ok")
        self.assertEqual(len(self.links), 1)  # same device, not recreated

    def test_a_refused_repair_stays_degraded_and_is_retried(self) -> None:
        self.start()
        self.links[-1].routes.clear()  # ip -6 route del 2001::/32
        self.failing.add("add_route")
        self.watches[-1].on_change()
        name = self.service.tunnel.name
        self.assertEqual(
            self.service.status()["health"],
            f"degraded: cannot announce route 2001::/32 proto 4 metric 1024: {name}: cannot add_route: File exists")
        self.failing.discard("add_route")
        self.reactor.advance(REPAIR_RETRY)
        self.assertEqual(self.service.status()["health"], "ok")
        self.assertIn(PREFIX, self.links[-1].routes)

    def test_stop_stops_the_link_watch(self) -> None:
        self.start()
        self.service.stopService()
        self.assertEqual(self.watches[-1].stopped, 1)
        self.watches[-1].on_change()  # a late notification: nothing to repair on a stopped role
        self.assertEqual(self.service.status()["health"], "ok")

    def test_start_creates_tun_address_route_and_port(self) -> None:
        self.start()
        self.assertEqual(self.device().requestedName.rstrip(b"\0"), b"trelay")
        self.assertEqual(
            self.calls,
            [("prepare",), ("up", 1280), ("add_address", RELAY_INTERFACE_ADDRESS), ROUTE_ADDED],
        )
        self.assertEqual(str(RELAY_INTERFACE_ADDRESS), "fe80::ffff:ffff:ffff/64")
        [(port, protocol, interface, _)] = self.reactor.udp_ports
        self.assertEqual((port, interface, protocol), (3544, "198.18.0.10", self.service.udp))

    def configure(self, **changes: Any) -> None:
        self.service = RelayService(
            replace(self.config, **changes),
            reactor=self.reactor,
            tun_system=self.system,
            link_factory=self.link,
            link_watch=self.watch,
            error_source=lambda destination: ERROR_SOURCE,
        )

    def test_bubble_cap_comes_from_the_config(self) -> None:
        self.configure(bubbles_per_second=2)
        self.start()
        self.from_kernel(echo(NATIVE, PEER), echo(NATIVE, teredo(port=1000)))
        self.assertEqual(len(self.udp_sent()), 2)  # one round
        self.assertEqual(self.service.counters["bubbles.rate-limited"], 2)

    def test_served_prefixes_come_from_the_config(self) -> None:
        self.configure(served_prefixes=(IPv6Network("2001:db8:2::/48"),))
        self.start()
        for destination in (NATIVE, IPv6Address("2001:db8:2::1").packed):
            self.service.udp.datagramReceived(echo(PEER, destination), PEER_MAPPING)
        self.assertEqual(list(self.device().writeBuffer), [echo(PEER, IPv6Address("2001:db8:2::1").packed)])
        self.assertEqual(self.service.counters.drops(), {"udp.unserved-destination": 1})

    def test_failed_route_leaves_nothing_open(self) -> None:
        self.failing.add("add_route")
        self.assertRaises(LinkError, self.service.privilegedStartService)
        self.reactor.advance(0)
        self.assertEqual(self.system._openFiles, {})
        self.assertEqual(self.reactor.udp_ports, [])

    def test_stop_removes_route_and_device_and_closes_port(self) -> None:
        self.start()
        d = self.service.stopService()
        self.reactor.advance(0)  # TuntapPort closes its descriptor on the next iteration
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.calls[-2:], [ROUTE_REMOVED, ("remove_address", RELAY_INTERFACE_ADDRESS)])
        self.assertEqual(self.system._openFiles, {})
        self.assertTrue(self.reactor.udp_ports[0][3].stopped)

    def test_end_to_end_discovery_flush_and_reply(self) -> None:
        self.start()
        packets = [echo(NATIVE, PEER, 1, size=1280 - 48), echo(NATIVE, PEER, 2)]  # a full-MTU one first
        self.from_kernel(*packets[:1])
        bubble = build_bubble(RELAY_LINK_LOCAL, PEER)
        self.assertEqual(self.udp_sent(), [(bubble, (SERVER, 3544)), (bubble, PEER_MAPPING)])
        self.service.udp.datagramReceived(build_bubble(PEER, RELAY_LINK_LOCAL), PEER_MAPPING)
        self.from_kernel(packets[1])
        self.assertEqual(self.udp_sent()[2:], [(packet, PEER_MAPPING) for packet in packets])
        reply = echo(PEER, NATIVE)
        self.service.udp.datagramReceived(reply, PEER_MAPPING)
        self.assertEqual(list(self.device().writeBuffer), [reply])

    def test_timer_retries_then_reports_unreachable(self) -> None:
        self.start()
        self.from_kernel(echo(NATIVE, PEER))
        self.reactor.advance(2.0)
        self.assertEqual(len(self.udp_sent()), 4)
        self.assertEqual(list(self.device().writeBuffer), [])
        self.reactor.advance(2.0)
        [error] = self.device().writeBuffer
        self.assertEqual(error[HEADER_LENGTH : HEADER_LENGTH + 2], bytes((ICMPV6_DEST_UNREACHABLE, 3)))
        self.assertEqual(parse_header(error).source, ERROR_SOURCE)

    def test_timer_follows_expiry_and_stops_when_table_empty(self) -> None:
        self.start()
        recheck = list(self.reactor.getDelayedCalls())  # the native side's periodic re-check
        self.service.udp.datagramReceived(build_bubble(PEER, RELAY_LINK_LOCAL), PEER_MAPPING)
        [call] = [c for c in self.reactor.getDelayedCalls() if c not in recheck]
        self.assertAlmostEqual(call.getTime(), IDLE_TIMEOUT)
        self.reactor.advance(IDLE_TIMEOUT)
        self.assertEqual(self.service.status()["peers"]["count"], 0)
        self.assertEqual([c for c in self.reactor.getDelayedCalls() if c.getTime() % NATIVE_RECHECK], [])

    def test_status_and_peers(self) -> None:
        self.start()
        self.service.udp.datagramReceived(build_bubble(PEER, RELAY_LINK_LOCAL), PEER_MAPPING)
        self.reactor.advance(1.0)
        self.from_kernel(echo(NATIVE, teredo(port=4000)))
        self.service.udp.datagramReceived(b"junk", PEER_MAPPING)
        status = self.service.status()
        self.assertEqual(status["role"], "relay")
        self.assertEqual(status["address"], "198.18.0.10:3544")
        self.assertEqual(status["interface"], self.service.tunnel.name)
        self.assertEqual(status["peers"]["count"], 2)
        self.assertEqual(status["peers"]["trusted"], 1)
        self.assertEqual(status["peers"]["queued_bytes"], len(echo(NATIVE, PEER)))
        self.assertEqual(status["drops"], {"udp.ipv6-short": 1})
        self.assertEqual(status["counters"]["bubbles.sent"], 2)
        [first, second] = self.service.peers()
        self.assertEqual(first["address"], str(IPv6Address(teredo(port=4000))))
        self.assertFalse(first["trusted"])
        self.assertEqual(second["mapping"], f"{PEER_IP}:{PEER_PORT}")
        self.assertTrue(second["trusted"])

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.binary(max_size=1500), max_size=4), st.lists(teredo_datagrams(), max_size=4))
    def test_arbitrary_input_never_raises(self, packets: list[bytes], datagrams: list[bytes]) -> None:
        self.setUp()
        self.start()
        self.from_kernel(*packets)
        for data in datagrams:
            self.service.udp.datagramReceived(data, PEER_MAPPING)
        self.reactor.advance(10.0)
        self.assertEqual(self.service.counters["drop.internal-error"], 0)


def in_namespace(test: unittest.TestCase) -> Callable[..., str]:
    """A fresh network namespace (removed on cleanup) and a runner for commands inside it."""
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root: creates a network namespace")
    namespace = f"trelay-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", namespace], capture_output=True).returncode:
        raise unittest.SkipTest("network namespaces unavailable")
    test.addCleanup(subprocess.run, ["ip", "netns", "delete", namespace], capture_output=True)

    def run(*argv: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout

    run("ip", "link", "set", "lo", "up")
    return run


def add_uplink(run: Callable[..., str]) -> None:
    """A veth pair inside the namespace as the relay's uplink: its 2001:db8:9::/64 route
    overlaps 2000::/3, so the relay's native side is healthy (native_health)."""
    run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
    run("ip", "link", "set", "up1", "up")
    run("ip", "link", "set", "up0", "up")
    run("sysctl", "-qw", "net.ipv6.conf.up0.keep_addr_on_down=1")  # as a configured uplink keeps it
    run("ip", "-6", "addr", "add", "2001:db8:9::1/64", "dev", "up0", "nodad")


# Runs inside the namespace: start the service on the real reactor, look, stop, look again.
_LIFECYCLE = """
import json, socket, subprocess
from collections.abc import Callable
from ipaddress import IPv4Address
from twisted.internet import task
from twisted.internet.defer import Deferred
from teredo_appliance.config_model import RelayConfig
from teredo_appliance.roles.relay import RelayService

def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True).stdout

async def main(reactor):
    service = RelayService(RelayConfig(interface="trly0", bind_address=IPv4Address("127.0.0.1"), bind_port=0))
    service.privilegedStartService()
    service.startService()
    port = service.bound_port
    up = {"link": sh("ip", "-o", "link", "show", "trly0"), "addr": sh("ip", "-6", "-o", "addr", "show", "dev", "trly0"),
          "route": sh("ip", "-6", "route", "show", "2001::/32"), "udp": sh("ss", "-uln")}
    await service.stopService()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", port))  # fails if the relay still holds it
    down = {"link": sh("ip", "-o", "link", "show"), "route": sh("ip", "-6", "route", "show", "2001::/32")}
    print(json.dumps({"port": port, "up": up, "down": down}))

task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
"""


class RealTunnelLifecycleTests(unittest.TestCase):
    def test_start_creates_device_address_route_and_stop_removes_them(self) -> None:
        run = in_namespace(self)
        add_uplink(run)
        report = json.loads(run(sys.executable, "-c", _LIFECYCLE))
        up, down = report["up"], report["down"]
        self.assertIn("mtu 1280", up["link"])
        self.assertIn("fe80::ffff:ffff:ffff/64", up["addr"])
        self.assertEqual(up["addr"].count("inet6"), 1)  # no kernel-made link-local beside ours
        self.assertIn("2001::/32 dev trly0", up["route"])
        self.assertIn(f"127.0.0.1:{report['port']}", up["udp"])
        self.assertNotIn("trly0", down["link"])
        self.assertEqual(down["route"].strip(), "")


# Runs inside the namespace: the uplink goes down, the relay withdraws; up again, it announces.
_UPLINK = """
import json, subprocess
from ipaddress import IPv4Address
from twisted.internet import task
from twisted.internet.defer import Deferred
from teredo_appliance.config_model import RelayConfig
from teredo_appliance.roles.relay import RelayService

def route():
    return subprocess.run(["ip", "-6", "route", "show", "2001::/32"], capture_output=True, text=True).stdout.strip()

async def main(reactor):
    service = RelayService(RelayConfig(interface="trly0", bind_address=IPv4Address("127.0.0.1"), bind_port=0))
    service.privilegedStartService()
    service.startService()
    seen = [(route(), service.health())]
    for state in ("down", "up"):
        subprocess.run(["ip", "link", "set", "up0", state], check=True)
        await task.deferLater(reactor, 1.5, lambda: None)  # netwatch DEBOUNCE is 0.5 s
        seen.append((route(), service.health()))
    await service.stopService()
    print(json.dumps(seen))

task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
"""


class RealNativeHealthTests(unittest.TestCase):
    def test_uplink_down_withdraws_the_route_and_uplink_up_restores_it(self) -> None:
        run = in_namespace(self)
        add_uplink(run)
        (up, healthy), (down, problem), (back, repaired) = json.loads(run(sys.executable, "-c", _UPLINK))
        self.assertIn("2001::/32 dev trly0", up)
        self.assertIsNone(healthy)
        self.assertEqual(down, "")
        self.assertEqual(problem, "no IPv6 route toward 2000::/3 except through trly0")
        self.assertIn("2001::/32 dev trly0", back)
        self.assertIsNone(repaired)


class KernelDropCountTests(unittest.TestCase):
    def test_drops_of_a_real_tun_are_read_over_netlink(self) -> None:
        """A TUN nobody reads: the kernel drops what it routes there, as `ip -s link` shows."""
        run = in_namespace(self)
        run("ip", "tuntap", "add", "dev", "tq0", "mode", "tun")
        run("ip", "link", "set", "tq0", "up")
        run("ip", "-6", "route", "add", "2001:db8:8::/64", "dev", "tq0")
        subprocess.run(["ip", "netns", "exec", f"trelay-{os.getpid()}", "ping", "-6", "-c", "3", "-i", "0.2",
                        "-W", "1", "2001:db8:8::1"], capture_output=True, check=False)
        code = "from teredo_appliance.netlink import Link; print(Link('tq0').drop_counts())"
        self.assertEqual(run(sys.executable, "-c", code).strip(), "{'tx_dropped': 3, 'rx_dropped': 0}")


class KernelErrorSourceTests(unittest.TestCase):
    def test_local_sender_gets_the_link_local(self) -> None:
        self.assertEqual(kernel_error_source(IPv6Address("::1").packed), RELAY_LINK_LOCAL)

    def test_link_local_sender_gets_the_link_local(self) -> None:
        self.assertEqual(kernel_error_source(IPv6Address("fe80::1").packed), RELAY_LINK_LOCAL)

    def test_remote_sender_gets_the_hosts_global_address(self) -> None:
        """In a namespace of our own: the address on the interface towards the sender."""
        run = in_namespace(self)
        run("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        run("ip", "link", "set", "v0", "up")
        run("ip", "addr", "add", "2001:db8:7::1/64", "dev", "v0", "nodad")
        code = (
            "import ipaddress as i; from teredo_appliance.roles.relay import kernel_error_source as k;"
            "print(i.IPv6Address(k(i.IPv6Address('2001:db8:7::99').packed)))"
        )
        output = run(sys.executable, "-c", code)
        self.assertEqual(output.strip(), "2001:db8:7::1")


class MiredoVectorSanityTests(unittest.TestCase):
    def test_vectors_are_what_the_tests_assume(self) -> None:
        bubble = parse_datagram(vectors.MIREDO["bubble-client-to-relay"].payload)
        self.assertTrue(is_bubble(bubble.header))
        self.assertEqual(bubble.header.source[:4], PREFIX.network_address.packed[:4])
