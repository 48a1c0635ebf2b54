"""Server role: §5.3.1 rule by rule, Miredo's own datagrams byte for byte, fuzzing, real sockets."""

from __future__ import annotations

import errno
import socket
import sys
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from teredo_appliance.config_model import ServerConfig
from teredo_appliance.rawsock import RawIPv6Sender
from teredo_appliance.roles.server import ServerService
from teredo_appliance.roles.server_machine import (
    ANSWERED_RS,
    FORWARDED_NATIVE,
    FORWARDED_TEREDO,
    FORWARDED_TEREDO_OTHER,
    MAX_FORWARDED_PAYLOAD,
    PRIMARY,
    RAW,
    REPLY,
    SECONDARY,
    ServerMachine,
)
from teredo_appliance.stats import BYTES, Counters
from teredo_appliance.wire import ipv6, nd
from teredo_appliance.wire.address import FLAG_CONE, TeredoAddress, int_to_ipv4, ipv4_to_int
from teredo_appliance.wire.scope import is_global_unicast
from teredo_appliance.wire.teredo import AuthIndicator, build_bubble, is_bubble, origin_indication, parse_datagram
from tests.vectors import MIREDO

SERVER = ipv4_to_int("198.18.0.1")
SERVER2 = ipv4_to_int("198.18.0.2")
OTHER_SERVER = ipv4_to_int("198.18.5.1")
CLIENT_IP, CLIENT_PORT = MIREDO["rs-with-auth-nonce"].source  # 198.18.0.100:52732
RELAY_IP, RELAY_PORT = MIREDO["bubble-relay-to-server"].source  # 198.18.0.10:49030
CLIENT = TeredoAddress(SERVER, 0x1C6B, CLIENT_PORT, CLIENT_IP).pack()  # the client in Miredo's capture
PEER = TeredoAddress(SERVER, 0x0402, 40000, ipv4_to_int("198.18.7.7")).pack()  # another client of ours
FOREIGN_PEER = TeredoAddress(OTHER_SERVER, 0, 40001, ipv4_to_int("198.18.8.8")).pack()
NATIVE = IPv6Address("2001:db8:1::2").packed
RELAY_LINK_LOCAL = IPv6Address("fe80::f0:73c7:8d61:56a1").packed
NONCE = bytes.fromhex("a83a134fb6ddf809")
NOW = 1000.0  # the machine's clock input; only the RS rate limit reads it


def make_machine(**overrides: Any) -> ServerMachine:
    return ServerMachine(SERVER, SERVER2, Counters(), **overrides)


AUTH = AuthIndicator(NONCE)


def rs(cone: bool = False, auth: AuthIndicator | None = AUTH) -> bytes:
    return (auth.pack() if auth else b"") + nd.router_solicitation(cone)


def echo(source: bytes, destination: bytes, data: bytes = b"x" * 16) -> bytes:
    return ipv6.build_echo(source, destination, 0x1512, 1, data)


def events_and_drops(service: ServerService) -> dict[str, int]:
    """What a datagram made the server do; byte counters (metrics) move with every packet."""
    return {key: count for key, count in service.counters.items() if not key.startswith(BYTES)}


class VectorTests(SynchronousTestCase):
    """Miredo 1.2.6's own exchanges: the same datagram in gives the same datagram out."""

    def test_rs_gets_miredos_ra(self) -> None:
        machine = make_machine()
        rs_in, ra_out = MIREDO["rs-with-auth-nonce"], MIREDO["ra-with-auth-origin"]
        self.assertEqual(
            machine.handle(rs_in.payload, CLIENT_IP, CLIENT_PORT, PRIMARY, NOW),
            (PRIMARY, ra_out.payload, REPLY, ANSWERED_RS),
        )
        self.assertEqual(machine.counters, {})  # the service counts the RA once it is sent

    def test_general_path_builds_the_same_ra(self) -> None:
        """An RS with trailing bytes misses the fast path; the answer must not change."""
        machine = make_machine()
        output = machine.handle(MIREDO["rs-with-auth-nonce"].payload + b"trailer", CLIENT_IP, CLIENT_PORT, PRIMARY, NOW)
        self.assertEqual(output, (PRIMARY, MIREDO["ra-with-auth-origin"].payload, REPLY, ANSWERED_RS))

    def test_relay_bubble_forwarded_with_origin(self) -> None:
        machine = make_machine()
        bubble = MIREDO["bubble-relay-to-server"]
        self.assertEqual(
            machine.handle(bubble.payload, RELAY_IP, RELAY_PORT, PRIMARY, NOW),
            (PRIMARY, MIREDO["bubble-forwarded-with-origin"].payload, ("198.18.0.100", 52732), FORWARDED_TEREDO),
        )

    def test_relay_bubble_on_secondary_still_leaves_from_primary(self) -> None:
        output = make_machine().handle(MIREDO["bubble-relay-to-server"].payload, RELAY_IP, RELAY_PORT, SECONDARY, NOW)
        assert output is not None
        self.assertEqual(output[0], PRIMARY)

    def test_echo_test_goes_out_native(self) -> None:
        """As Miredo's client sent it, one hop fewer (the server routes it: Miredo's does not)."""
        machine = make_machine()
        echo_test = MIREDO["echo-test-via-server"].payload
        self.assertEqual(echo_test[7], 128)
        self.assertEqual(
            machine.handle(echo_test, CLIENT_IP, CLIENT_PORT, PRIMARY, NOW),
            (RAW, echo_test[:7] + bytes((127,)) + echo_test[8:], ("2001:db8:1::2", 0), FORWARDED_NATIVE),
        )


class QualificationTests(SynchronousTestCase):
    """§5.3.2: Router Advertisements."""

    def parsed_ra(self, output: Any) -> tuple[Any, nd.RouterAdvertisement]:
        datagram = parse_datagram(output[1])
        return datagram, nd.parse_router_advertisement(datagram.packet, datagram.header)

    def test_ra_contents(self) -> None:
        output = make_machine().handle(rs(), CLIENT_IP, CLIENT_PORT, PRIMARY, NOW)
        datagram, ra = self.parsed_ra(output)
        self.assertEqual(datagram.auth, AuthIndicator(NONCE, 0))
        self.assertEqual((datagram.origin.ip, datagram.origin.port), (CLIENT_IP, CLIENT_PORT))
        self.assertEqual(ra.source, nd.server_link_local(SERVER))
        self.assertEqual(ra.destination, nd.RS_SOURCE)
        self.assertEqual(ra.prefixes, ((IPv6Address("2001:0:c612:1::").packed, 64),))
        self.assertEqual(ra.mtu, 1280)

    def test_configured_prefix_and_mtu(self) -> None:
        machine = make_machine(prefix32=IPv6Address("3ffe:831f::").packed[:4], mtu=1400)
        for request in (rs(), rs(cone=True), rs(auth=None)):
            _, ra = self.parsed_ra(machine.handle(request, CLIENT_IP, CLIENT_PORT, PRIMARY, NOW))
            self.assertEqual(ra.prefixes, ((IPv6Address("3ffe:831f:c612:1::").packed, 64),))
            self.assertEqual(ra.mtu, 1400)

    def test_rs_without_auth_gets_ra_without_auth(self) -> None:
        output = make_machine().handle(rs(auth=None), CLIENT_IP, CLIENT_PORT, PRIMARY, NOW)
        assert output is not None
        self.assertEqual(output[1], MIREDO["ra-with-auth-origin"].payload[13:])

    def test_nonce_echoed_with_confirmation_zero(self) -> None:
        """A client id or a non-zero confirmation in the RS changes nothing but the nonce."""
        auth = AuthIndicator(b"12345678", confirmation=1, client_id=b"id", auth_value=b"mac")
        datagram, _ = self.parsed_ra(make_machine().handle(rs(auth=auth), CLIENT_IP, CLIENT_PORT, PRIMARY, NOW))
        self.assertEqual(datagram.auth, AuthIndicator(b"12345678", 0))

    def test_socket_choice(self) -> None:
        """The RA leaves from the secondary iff (arrived on secondary) XOR (cone RS source)."""
        machine = make_machine()
        for which, cone, expected in (
            (PRIMARY, False, PRIMARY),
            (PRIMARY, True, SECONDARY),
            (SECONDARY, False, SECONDARY),
            (SECONDARY, True, PRIMARY),
        ):
            for auth in (AuthIndicator(NONCE), None):  # the fast path and the general path
                output = machine.handle(rs(cone, auth), CLIENT_IP, CLIENT_PORT, which, NOW)
                assert output is not None
                self.assertEqual(output[0], expected, (which, cone, auth))
                self.assertEqual(self.parsed_ra(output)[1].destination, nd.RS_SOURCE_CONE if cone else nd.RS_SOURCE)

    def test_rs_from_matching_teredo_source(self) -> None:
        """Rule 5: a qualified client may solicit from its Teredo address; the cone flag decides."""
        cone_client = TeredoAddress(SERVER, FLAG_CONE, CLIENT_PORT, CLIENT_IP).pack()
        for source, destination, expected in (
            (CLIENT, nd.ALL_ROUTERS, PRIMARY),
            (CLIENT, nd.server_link_local(SERVER), PRIMARY),
            (cone_client, nd.ALL_ROUTERS, SECONDARY),
        ):
            packet = ipv6.build_icmpv6(source, destination, nd.ICMPV6_ROUTER_SOLICITATION, 0, bytes(4), 255)
            output = make_machine().handle(packet, CLIENT_IP, CLIENT_PORT, PRIMARY, NOW)
            assert output is not None
            self.assertEqual(output[0], expected)
            self.assertEqual(self.parsed_ra(output)[1].destination, source)

    def test_rs_from_other_link_local(self) -> None:
        """Rule 4 accepts any link-local source; the RA is built for it, checksum and all."""
        source = IPv6Address("fe80::1234").packed
        packet = ipv6.build_icmpv6(source, nd.ALL_ROUTERS, nd.ICMPV6_ROUTER_SOLICITATION, 0, bytes(4), 255)
        output = make_machine().handle(packet, CLIENT_IP, CLIENT_PORT, SECONDARY, NOW)
        assert output is not None
        self.assertEqual(output[0], SECONDARY)
        self.assertEqual(self.parsed_ra(output)[1].destination, source)


class ForwardingTests(SynchronousTestCase):
    """§5.3.1: what the server relays and where."""

    def test_teredo_to_our_client_with_origin(self) -> None:
        packet = build_bubble(CLIENT, PEER)
        machine = make_machine()
        self.assertEqual(
            machine.handle(packet, CLIENT_IP, CLIENT_PORT, PRIMARY, NOW),
            (PRIMARY, origin_indication(CLIENT_IP, CLIENT_PORT) + packet, ("198.18.7.7", 40000), FORWARDED_TEREDO),
        )

    def test_teredo_to_other_servers_client_without_origin(self) -> None:
        packet = build_bubble(CLIENT, FOREIGN_PEER)
        machine = make_machine()
        output = machine.handle(packet, CLIENT_IP, CLIENT_PORT, PRIMARY, NOW)
        self.assertEqual(output, (PRIMARY, packet, ("198.18.8.8", 40001), FORWARDED_TEREDO_OTHER))

    def test_native_to_our_client(self) -> None:
        """Rule 6: a relay's echo reply to a client of ours."""
        packet = echo(NATIVE, CLIENT)
        output = make_machine().handle(packet, RELAY_IP, RELAY_PORT, PRIMARY, NOW)
        self.assertEqual(
            output,
            (PRIMARY, origin_indication(RELAY_IP, RELAY_PORT) + packet, ("198.18.0.100", 52732), FORWARDED_TEREDO),
        )

    def test_incoming_headers_and_echo_trailers_are_not_forwarded(self) -> None:
        """A forwarded echo is the IPv6 packet alone: no auth/origin from the sender, no trailer."""
        ours = origin_indication(CLIENT_IP, CLIENT_PORT)
        for destination, head, ip in ((PEER, ours, "198.18.7.7"), (FOREIGN_PEER, b"", "198.18.8.8")):
            packet = echo(CLIENT, destination)
            data = AuthIndicator(NONCE).pack() + origin_indication(1, 2) + packet + b"trailer"
            output = make_machine().handle(data, CLIENT_IP, CLIENT_PORT, PRIMARY, NOW)
            assert output is not None
            self.assertEqual((output[1], output[2][0]), (head + packet, ip))
        packet = echo(CLIENT, NATIVE)
        data = AuthIndicator(NONCE).pack() + origin_indication(1, 2) + packet + b"trailer"
        output = make_machine().handle(data, CLIENT_IP, CLIENT_PORT, PRIMARY, NOW)
        self.assertEqual(output[1][8:], packet[8:])  # after the hop limit, the packet as sent

    def test_payload_limit_boundary(self) -> None:
        """Miredo's 88-byte cap: an echo with 88 payload bytes passes, 89 do not."""
        machine = make_machine()
        at_limit = echo(CLIENT, NATIVE, bytes(MAX_FORWARDED_PAYLOAD - 8))
        self.assertIsNotNone(machine.handle(at_limit, CLIENT_IP, CLIENT_PORT, PRIMARY, NOW))
        over = echo(CLIENT, NATIVE, bytes(MAX_FORWARDED_PAYLOAD - 7))
        self.assertIsNone(machine.handle(over, CLIENT_IP, CLIENT_PORT, PRIMARY, NOW))
        self.assertEqual(machine.counters.drops(), {"too-big": 1})


class DropTests(SynchronousTestCase):
    """Every refusal: nothing sent, exactly one counted drop with its reason."""

    def assertDropped(self, reason: str, data: bytes, ip: int = CLIENT_IP, port: int = CLIENT_PORT,
                      machine: ServerMachine | None = None) -> None:
        machine = machine or make_machine()
        self.assertIsNone(machine.handle(data, ip, port, PRIMARY, NOW))
        self.assertEqual(machine.counters, {"drop." + reason: 1})

    def test_rule1_malformed(self) -> None:
        self.assertDropped("ipv6-short", b"")
        self.assertDropped("not-ipv6", b"\x45" + bytes(60))
        self.assertDropped("ipv6-truncated", build_bubble(CLIENT, PEER)[:4] + b"\x00\x10" + bytes(34))
        self.assertDropped("auth-truncated", b"\x00\x01\x05\x00" + bytes(10))
        self.assertDropped("origin-truncated", b"\x00\x00\x01\x02")

    def test_rule2_neither_bubble_nor_icmpv6(self) -> None:
        self.assertDropped("not-bubble-or-icmpv6", ipv6.build_packet(CLIENT, PEER, 17, bytes(8)))
        # next header 59 with a payload is not a bubble either
        self.assertDropped("not-bubble-or-icmpv6", ipv6.build_packet(CLIENT, PEER, 59, bytes(8)))

    def test_rule3_non_global_source(self) -> None:
        for ip in ("10.0.0.1", "127.0.0.1", "192.168.1.1", "224.0.0.253"):
            self.assertDropped("source-not-global", rs(), ipv4_to_int(ip))  # fast path
            self.assertDropped("source-not-global", rs(auth=None), ipv4_to_int(ip))

    def test_rule4_not_a_valid_rs(self) -> None:
        """An RS needs hop limit 255 (RFC 4861 §6.1.1) and a link-local source to all-routers."""
        low_hops = ipv6.build_icmpv6(nd.RS_SOURCE, nd.ALL_ROUTERS, nd.ICMPV6_ROUTER_SOLICITATION, 0, bytes(4), 64)
        self.assertDropped("to-server-not-rs", low_hops)
        self.assertDropped("to-server-not-rs", echo(nd.RS_SOURCE, nd.ALL_ROUTERS))
        self.assertDropped("to-server-not-rs", echo(CLIENT, nd.server_link_local(SERVER)))
        for source, destination in ((NATIVE, nd.ALL_ROUTERS), (nd.RS_SOURCE, nd.server_link_local(SERVER))):
            packet = ipv6.build_icmpv6(source, destination, nd.ICMPV6_ROUTER_SOLICITATION, 0, bytes(4), 255)
            self.assertDropped("rs-bad-source", packet)

    def test_rule5_teredo_source_must_embed_outer_address(self) -> None:
        self.assertDropped("teredo-source-mismatch", build_bubble(CLIENT, PEER), port=CLIENT_PORT + 1)
        self.assertDropped("teredo-source-mismatch", build_bubble(CLIENT, PEER), ip=CLIENT_IP + 1)
        packet = ipv6.build_icmpv6(CLIENT, nd.ALL_ROUTERS, nd.ICMPV6_ROUTER_SOLICITATION, 0, bytes(4), 255)
        self.assertDropped("teredo-source-mismatch", packet, port=1)

    def test_rule6_non_teredo_source_only_to_our_clients(self) -> None:
        self.assertDropped("not-our-client", build_bubble(RELAY_LINK_LOCAL, FOREIGN_PEER), RELAY_IP, RELAY_PORT)
        self.assertDropped("not-our-client", echo(NATIVE, NATIVE), RELAY_IP, RELAY_PORT)

    def test_loop_from_our_own_address(self) -> None:
        for ip in (SERVER, SERVER2):
            self.assertDropped("loop", MIREDO["rs-with-auth-nonce"].payload, ip, 3544)
            self.assertDropped("loop", build_bubble(RELAY_LINK_LOCAL, CLIENT), ip, 3544)

    def test_loop_to_our_own_address(self) -> None:
        ourselves = TeredoAddress(SERVER, 0, 3544, SERVER2).pack()
        self.assertDropped("loop", build_bubble(RELAY_LINK_LOCAL, ourselves), RELAY_IP, RELAY_PORT)

    def test_non_global_ipv6_destination(self) -> None:
        for text in ("ff05::1", "fe80::1", "::1", "::"):
            self.assertDropped("destination-not-global", echo(CLIENT, IPv6Address(text).packed))

    def test_non_global_mapped_destination(self) -> None:
        private = TeredoAddress(SERVER, 0, 40000, ipv4_to_int("10.1.2.3")).pack()
        self.assertDropped("mapped-not-global", build_bubble(CLIENT, private))

    def test_too_big(self) -> None:
        self.assertDropped("too-big", echo(CLIENT, PEER, bytes(200)))


class PortZeroTests(SynchronousTestCase):
    """Port 0 is no destination: a counted drop in the machine, never a send error."""

    def test_forward_to_port_zero(self) -> None:
        machine = make_machine()
        port_zero = TeredoAddress(SERVER, 0, 0, ipv4_to_int("198.18.7.7")).pack()
        self.assertIsNone(machine.handle(build_bubble(CLIENT, port_zero), CLIENT_IP, CLIENT_PORT, PRIMARY, NOW))
        self.assertEqual(machine.counters, {"drop.port-zero": 1})

    def test_rs_from_port_zero(self) -> None:
        for request in (rs(), rs(auth=None)):  # the fast path and the general path
            machine = make_machine()
            self.assertIsNone(machine.handle(request, CLIENT_IP, 0, PRIMARY, NOW))
            self.assertEqual(machine.counters, {"drop.port-zero": 1})


def icmpv6(source: bytes, destination: bytes, icmp_type: int, hop_limit: int = 255) -> bytes:
    return ipv6.build_icmpv6(source, destination, icmp_type, 0, bytes(4), hop_limit)


def forwarded(data: bytes, ip: int = CLIENT_IP, port: int = CLIENT_PORT) -> Any:
    return make_machine().handle(data, ip, port, PRIMARY, NOW)


class HostileForwardingTests(SynchronousTestCase):
    """What the open Internet must not get through the server."""

    def assertDropped(self, reason: str, data: bytes, ip: int = CLIENT_IP, port: int = CLIENT_PORT) -> None:
        machine = make_machine()
        self.assertIsNone(machine.handle(data, ip, port, PRIMARY, NOW), reason)
        self.assertEqual(machine.counters, {"drop." + reason: 1})

    # RFC 4380 §5.3: bubbles and ICMPv6 echo only ("not ... other types")
    def test_only_echo_among_icmpv6_is_forwarded(self) -> None:
        for icmp_type in (1, 2, 3, 4, 130, 133, 134, 135, 136, 137, 143, 200):
            self.assertDropped("not-bubble-or-echo", icmpv6(CLIENT, NATIVE, icmp_type))  # native side
            self.assertDropped("not-bubble-or-echo", icmpv6(NATIVE, CLIENT, icmp_type), RELAY_IP, RELAY_PORT)
            self.assertDropped("not-bubble-or-echo", icmpv6(CLIENT, PEER, icmp_type))  # to a Teredo client

    def test_echo_request_and_reply_still_forwarded(self) -> None:
        for reply in (False, True):
            packet = ipv6.build_echo(CLIENT, NATIVE, 1, 2, b"data", reply=reply)
            self.assertEqual(forwarded(packet)[3], FORWARDED_NATIVE)
            packet = ipv6.build_echo(NATIVE, CLIENT, 1, 2, b"data", reply=reply)
            self.assertEqual(forwarded(packet, RELAY_IP, RELAY_PORT)[3], FORWARDED_TEREDO)

    def test_echo_with_a_code_or_truncated_is_not_echo(self) -> None:
        self.assertDropped("not-bubble-or-echo", ipv6.build_icmpv6(CLIENT, NATIVE, 128, 1, bytes(4)))
        self.assertDropped("not-bubble-or-echo", ipv6.build_packet(CLIENT, NATIVE, 58, bytes((128, 0, 0, 0))))

    # The server routes what it emits natively: hop limit - 1 (RFC 8200 §3)
    def test_native_hop_limit_is_decremented_checksum_still_right(self) -> None:
        packet = ipv6.build_echo(CLIENT, NATIVE, 0x1512, 1, b"x" * 16, hop_limit=64)
        key, out, _, _ = forwarded(packet)
        self.assertEqual(key, RAW)
        self.assertEqual(out, packet[:7] + bytes((63,)) + packet[8:])
        header = ipv6.parse_header(out)
        self.assertEqual(header.hop_limit, 63)
        self.assertTrue(ipv6.checksum_ok(out, header))

    def test_native_hop_limit_exhausted(self) -> None:
        for hops in (0, 1):
            packet = ipv6.build_echo(CLIENT, NATIVE, 0x1512, 1, b"x", hop_limit=hops)
            self.assertDropped("hop-limit-exceeded", packet)

    def test_bubbles_keep_their_hop_limit(self) -> None:
        packet = ipv6.build_packet(CLIENT, PEER, 59, b"", hop_limit=1)
        self.assertEqual(forwarded(packet)[1], origin_indication(CLIENT_IP, CLIENT_PORT) + packet)

    # Scope of both addresses (RFC 4291 §2.4, RFC 4380 §5.3.1)
    def test_non_global_destinations(self) -> None:
        for text in ("fec0::1", "fc00::1", "fd12:3456::1", "::ffff:198.18.0.9", "::198.18.0.9", "ff02::1",
                     "ff0e::1", "fe80::1", "::1", "::"):
            self.assertDropped("destination-not-global", echo(CLIENT, IPv6Address(text).packed))

    def test_non_global_sources(self) -> None:
        for text in ("fe80::1", "ff02::1", "ff0e::1", "::", "::1", "fc00::1", "fec0::1", "::ffff:198.18.0.9"):
            source = IPv6Address(text).packed
            self.assertDropped("ipv6-source-not-global", echo(source, CLIENT), RELAY_IP, RELAY_PORT)
            if text != "fe80::1":  # a relay's indirect bubble comes from its link-local (RFC 4380 §5.4.1)
                self.assertDropped("ipv6-source-not-global", build_bubble(source, CLIENT), RELAY_IP, RELAY_PORT)

    def test_link_local_bubble_to_a_teredo_client_still_forwarded(self) -> None:
        output = forwarded(build_bubble(RELAY_LINK_LOCAL, CLIENT), RELAY_IP, RELAY_PORT)
        self.assertEqual(output[3], FORWARDED_TEREDO)

    # RFC 4861 §6.1.1: an RS whose checksum fails is no RS
    def test_rs_checksum_verified_on_the_general_path(self) -> None:
        good = nd.router_solicitation()
        bad = good[:42] + bytes((good[42] ^ 1,)) + good[43:]
        for data in (bad, AUTH.pack() + bad, b"\x00\x01\x01\x00x" + NONCE + b"\x00" + bad):
            self.assertDropped("rs-bad-checksum", data)
        teredo_rs = icmpv6(CLIENT, nd.ALL_ROUTERS, nd.ICMPV6_ROUTER_SOLICITATION)
        self.assertDropped("rs-bad-checksum", teredo_rs[:43] + bytes((teredo_rs[43] ^ 1,)) + teredo_rs[44:])

    def test_the_fast_paths_canonical_rs_has_a_valid_checksum(self) -> None:
        for cone in (False, True):
            packet = nd.router_solicitation(cone)
            self.assertTrue(ipv6.checksum_ok(packet, ipv6.parse_header(packet)))

    # RFC 6081 trailers ride behind a bubble's IPv6 packet
    def test_bubble_trailers_are_kept(self) -> None:
        trailer = bytes.fromhex("0104deadbeef") + bytes.fromhex("0302000001020304abcd")
        bubble = build_bubble(CLIENT, PEER)
        self.assertEqual(forwarded(bubble + trailer)[1], origin_indication(CLIENT_IP, CLIENT_PORT) + bubble + trailer)
        bubble = build_bubble(CLIENT, FOREIGN_PEER)
        self.assertEqual(forwarded(AUTH.pack() + bubble + trailer)[1], bubble + trailer)

    def test_bubble_trailers_are_bounded(self) -> None:
        bubble = build_bubble(CLIENT, PEER)
        self.assertIsNotNone(forwarded(bubble + bytes(MAX_FORWARDED_PAYLOAD)))
        self.assertDropped("trailer-too-big", bubble + bytes(MAX_FORWARDED_PAYLOAD + 1))


class RateLimitTests(SynchronousTestCase):
    """RS per source IPv4: a burst, then a steady rate; the server is no reflector at line rate."""

    def answered(self, machine: ServerMachine, count: int, now: float, ip: int = CLIENT_IP,
                 request: bytes | None = None) -> int:
        request = rs() if request is None else request
        return sum(machine.handle(request, ip, CLIENT_PORT + i, PRIMARY, now) is not None for i in range(count))

    def test_default_burst_then_rate(self) -> None:
        machine = make_machine()  # 20 RS/s, burst 40
        self.assertEqual(self.answered(machine, 100, NOW), 40)
        self.assertEqual(machine.counters, {"drop.rs-rate-limited": 60})
        self.assertEqual(self.answered(machine, 100, NOW + 1.0), 20)  # one second refills 20
        self.assertEqual(self.answered(machine, 100, NOW + 1000.0), 40)  # never more than the burst

    def test_general_path_is_limited_too(self) -> None:
        machine = make_machine()
        self.assertEqual(self.answered(machine, 30, NOW, request=rs(auth=None)), 30)
        self.assertEqual(self.answered(machine, 30, NOW), 10)  # one bucket for both paths

    def test_each_source_has_its_own_bucket(self) -> None:
        machine = make_machine()
        self.assertEqual(self.answered(machine, 50, NOW), 40)
        self.assertEqual(self.answered(machine, 50, NOW, ip=RELAY_IP), 40)

    def test_forwarding_is_not_limited(self) -> None:
        machine = make_machine()
        self.answered(machine, 50, NOW)
        bubble = MIREDO["bubble-relay-to-server"].payload
        self.assertIsNotNone(machine.handle(bubble, CLIENT_IP, CLIENT_PORT, PRIMARY, NOW))


class ServiceRateLimitTests(SynchronousTestCase):
    def test_configured_limit_and_the_reactors_clock(self) -> None:
        clock = Clock()
        config = ServerConfig(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2"), rs_rate=0.5, rs_burst=2)
        service = ServerService(config, clock)
        transport = FakeDatagramTransport()
        service.protocols[PRIMARY].makeConnection(transport)
        for _ in range(5):
            service.protocols[PRIMARY].datagramReceived(rs(), ("198.18.0.100", 52732))
        clock.advance(2.0)  # earns one more
        for _ in range(5):
            service.protocols[PRIMARY].datagramReceived(rs(), ("198.18.0.100", 52732))
        self.assertEqual(events_and_drops(service), {ANSWERED_RS: 3, "drop.rs-rate-limited": 7})
        self.assertEqual(len(transport.written), 3)


class _RefusingTransport:
    """A UDP transport whose socket buffer is always full."""

    def write(self, data: bytes, addr: Any) -> None:
        raise OSError(errno.ENOBUFS, "No buffer space available")


class SendOutcomeTests(SynchronousTestCase):
    """`forwarded.*` and `rs-answered` count what really left; a failed send is only a drop."""

    @staticmethod
    def service(transport: Any) -> ServerService:
        service = ServerService(ServerConfig(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")), Clock())
        for protocol in service.protocols.values():
            protocol.makeConnection(transport)
        return service

    def test_failed_udp_send_is_a_drop_only(self) -> None:
        service = self.service(_RefusingTransport())
        service.protocols[PRIMARY].datagramReceived(MIREDO["bubble-relay-to-server"].payload, ("198.18.0.10", 49030))
        service.protocols[PRIMARY].datagramReceived(MIREDO["rs-with-auth-nonce"].payload, ("198.18.0.100", 52732))
        self.assertEqual(events_and_drops(service), {"drop.send-enobufs": 2})

    def test_failed_raw_send_is_a_drop_only(self) -> None:
        service = self.service(_RefusingTransport())  # the raw socket is not even open
        service.protocols[PRIMARY].datagramReceived(MIREDO["echo-test-via-server"].payload, ("198.18.0.100", 52732))
        self.assertEqual(events_and_drops(service), {"drop.socket-closed": 1})

    def test_successful_sends_are_counted(self) -> None:
        transport = FakeDatagramTransport()
        service = self.service(transport)
        service.protocols[PRIMARY].datagramReceived(MIREDO["bubble-relay-to-server"].payload, ("198.18.0.10", 49030))
        service.protocols[PRIMARY].datagramReceived(MIREDO["rs-with-auth-nonce"].payload, ("198.18.0.100", 52732))
        self.assertEqual(events_and_drops(service), {FORWARDED_TEREDO: 1, ANSWERED_RS: 1})
        self.assertEqual(
            transport.written,
            [(MIREDO["bubble-forwarded-with-origin"].payload, ("198.18.0.100", 52732)),
             (MIREDO["ra-with-auth-origin"].payload, ("198.18.0.100", 52732))],
        )


# Fuzzing: arbitrary bytes, and datagrams assembled from parts that reach every rule.
_addresses = st.sampled_from(
    [nd.RS_SOURCE, nd.RS_SOURCE_CONE, nd.ALL_ROUTERS, nd.server_link_local(SERVER), CLIENT, PEER, FOREIGN_PEER,
     NATIVE, RELAY_LINK_LOCAL, bytes(16), IPv6Address("::1").packed, IPv6Address("ff02::1").packed,
     IPv6Address("fd00::1").packed, IPv6Address("::ffff:198.18.0.9").packed]
) | st.binary(min_size=16, max_size=16)
_headers = st.one_of(
    st.just(b""),
    st.builds(lambda a: a.pack(), st.builds(AuthIndicator, st.binary(min_size=8, max_size=8), st.integers(0, 255),
                                            st.binary(max_size=4), st.binary(max_size=4))),
    st.builds(origin_indication, st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF)),
    st.binary(max_size=20),
)


@st.composite
def _datagrams(draw: Any) -> bytes:
    payload = draw(st.one_of(st.just(b""), st.just(bytes(4)), st.binary(max_size=100)))
    if payload and draw(st.booleans()):
        payload = bytes((draw(st.sampled_from((128, 129, 133, 134, 135, 136, 137, 1))),)) + payload[1:]
    packet = ipv6.build_packet(
        draw(_addresses), draw(_addresses), draw(st.sampled_from((58, 59, 17, 0))), payload,
        draw(st.sampled_from((255, 64, 2, 1, 0))),
    )
    if draw(st.booleans()):
        packet = packet[: draw(st.integers(0, len(packet)))] + draw(st.binary(max_size=8))
    return draw(_headers) + packet


_sources = st.sampled_from([(CLIENT_IP, CLIENT_PORT), (RELAY_IP, RELAY_PORT), (SERVER2, 3544)]) | st.tuples(
    st.sampled_from([CLIENT_IP, RELAY_IP, SERVER, ipv4_to_int("10.0.0.1")]) | st.integers(0, 0xFFFFFFFF),
    st.sampled_from([CLIENT_PORT, RELAY_PORT, 3544]) | st.integers(0, 0xFFFF),
)
_known = st.sampled_from([v.payload for v in MIREDO.values()] + [rs(), rs(True), rs(auth=None)])


class FuzzTests(SynchronousTestCase):
    def assertAccounted(self, machine: ServerMachine, data: bytes, source: tuple[int, int], which: str) -> None:
        """A drop moves exactly one drop counter; an output moves none and names the one to move once sent."""
        before = machine.counters.copy()
        output = machine.handle(data, source[0], source[1], which, NOW)
        changed = machine.counters - before
        if output is None:
            self.assertEqual(sum(changed.values()), 1, changed)  # exactly one thing happened
            (event,) = changed
            self.assertTrue(event.startswith("drop."), event)
            return
        self.assertEqual(changed, {})
        key, payload, destination, event = output
        self.assertIn(event, (ANSWERED_RS, FORWARDED_TEREDO, FORWARDED_TEREDO_OTHER, FORWARDED_NATIVE))
        self.assertIn(key, (PRIMARY, SECONDARY, RAW))
        self.assertIsInstance(payload, bytes)
        if destination is REPLY:
            self.assertEqual(event, ANSWERED_RS)  # only an RA goes back to the sender
            return
        host, port = destination
        socket.inet_pton(socket.AF_INET6 if key == RAW else socket.AF_INET, host)  # a literal address
        self.assertTrue(0 <= port <= 0xFFFF if key == RAW else 0 < port <= 0xFFFF)
        # What crosses the server: a bubble or an echo, between global addresses, routed natively.
        sent = parse_datagram(payload)
        header = sent.header
        self.assertTrue(is_global_unicast(header.destination), header)
        if is_bubble(header):
            self.assertNotEqual(key, RAW)
            self.assertTrue(is_global_unicast(header.source) or ipv6.is_link_local(header.source), header)
        else:
            self.assertTrue(ipv6.is_echo(sent.packet, header), header)
            self.assertTrue(is_global_unicast(header.source), header)
            self.assertEqual(sent.trailer, b"")
        if key == RAW:
            self.assertEqual(header.hop_limit + 1, parse_datagram(data).header.hop_limit)

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=200), _sources, st.sampled_from((PRIMARY, SECONDARY)))
    def test_arbitrary_bytes(self, data: bytes, source: tuple[int, int], which: str) -> None:
        self.assertAccounted(make_machine(), data, source, which)

    @settings(max_examples=1500, deadline=None)
    @given(_datagrams() | _known, _sources, st.sampled_from((PRIMARY, SECONDARY)))
    def test_structured_datagrams(self, data: bytes, source: tuple[int, int], which: str) -> None:
        self.assertAccounted(make_machine(), data, source, which)


class _FlakyTransport:
    """A UDP transport that accepts or refuses each send as the test decides."""

    def __init__(self, outcomes: list[bool]) -> None:
        self.outcomes = outcomes

    def write(self, data: bytes, addr: Any) -> None:
        if not self.outcomes.pop(0):
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")


class ServiceFuzzTests(SynchronousTestCase):
    """Through the service: every datagram moves exactly one counter, whether its send succeeds or not."""

    @settings(max_examples=500, deadline=None)
    @given(_datagrams() | _known, _sources, st.sampled_from((PRIMARY, SECONDARY)), st.booleans())
    def test_one_counter_per_datagram(self, data: bytes, source: tuple[int, int], which: str, ok: bool) -> None:
        service = SendOutcomeTests.service(_FlakyTransport([ok]))
        service.protocols[which].datagramReceived(data, (int_to_ipv4(source[0]), source[1]))
        self.assertEqual(sum(events_and_drops(service).values()), 1, service.counters)


class RawSenderTests(SynchronousTestCase):
    def test_send_never_raises(self) -> None:
        counters = Counters()
        sender = RawIPv6Sender(counters)
        self.assertFalse(sender.send(echo(CLIENT, NATIVE), "2001:db8:1::2"))
        self.assertEqual(counters.drops(), {"socket-closed": 1})
        require_raw_socket()
        sender.open()
        self.addCleanup(sender.close)
        self.assertFalse(sender.send(bytes(70000), "::1"))  # larger than any IPv6 packet
        self.assertEqual(counters.drops(), {"socket-closed": 1, "raw-send-emsgsize": 1})


    def test_the_kernel_sends_the_header_as_built(self) -> None:
        """IPPROTO_RAW implies IPV6_HDRINCL: the hop limit the machine wrote is the one on the wire."""
        require_raw_socket()
        listener = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        self.addCleanup(listener.close)
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        listener.settimeout(5)
        sender = RawIPv6Sender(Counters())
        sender.open()
        self.addCleanup(sender.close)
        marker = b"teredo-hop-limit-" + NONCE.hex().encode()
        packet = ipv6.build_echo(CLIENT, IPv6Address("::1").packed, 0x1512, 1, marker, hop_limit=63)
        self.assertTrue(sender.send(packet, "::1"))
        while True:  # the loopback may carry other ICMPv6; find ours
            data, ancillary, _, (source, *_) = listener.recvmsg(2048, socket.CMSG_SPACE(4))
            if data.endswith(marker) and data[0] == ipv6.ICMPV6_ECHO_REQUEST:
                break
        self.assertEqual(source, str(IPv6Address(CLIENT)))
        hops = [int.from_bytes(d, sys.byteorder) for level, kind, d in ancillary if kind == socket.IPV6_HOPLIMIT]
        self.assertEqual(hops, [63])
        self.assertEqual(data, packet[ipv6.HEADER_LENGTH :])  # checksum and all, as built


# Service: real UDP sockets on loopback and the real reactor.
class _Client(DatagramProtocol):
    """Collects datagrams with the address they came from."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.waiting: Deferred[None] | None = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.append((data, addr))
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.callback(None)

    def next(self) -> Deferred[None]:
        self.waiting = Deferred()
        return self.waiting.addTimeout(5, reactor)


def require_raw_socket() -> None:
    """Skip unless this process may open the server's raw IPv6 socket (CAP_NET_RAW)."""
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW).close()
    except PermissionError:
        raise SkipTest("needs CAP_NET_RAW for the server's raw IPv6 socket") from None


def _free_port() -> int:
    """A UDP port free on both 127.0.0.1 and 127.0.0.2 right now (3544 may be taken by other tests)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind(("127.0.0.2", port))
                except OSError:
                    continue
            return port
    raise SkipTest("no free UDP port on 127.0.0.1/127.0.0.2")


class ServiceTests(TestCase):
    CONFIG = ServerConfig(IPv4Address("127.0.0.1"), IPv4Address("127.0.0.2"), IPv6Network("2001::/32"), 1280)

    def start(self, permissive: bool = True, port: int | None = None) -> ServerService:
        require_raw_socket()
        port = port or _free_port()
        if permissive:
            service = ServerService(self.CONFIG, reactor, port=port, reachable_ipv4=lambda ip: True)
        else:
            service = ServerService(self.CONFIG, reactor, port=port)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    def client(self) -> tuple[_Client, Any]:
        client = _Client()
        port = reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return client, port

    @inlineCallbacks
    def test_rs_gets_ra_from_the_right_address(self) -> Any:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = self.start()
        client, port = self.client()
        client_port = port.getHost().port
        for cone, source in ((False, "127.0.0.1"), (True, "127.0.0.2")):
            waiting = client.next()
            port.write(rs(cone), ("127.0.0.1", service.port))
            yield waiting
            data, address = client.received[-1]
            self.assertEqual(address, (source, service.port))
            datagram = parse_datagram(data)
            self.assertEqual(datagram.auth, AuthIndicator(NONCE, 0))
            self.assertEqual((datagram.origin.ip, datagram.origin.port), (ipv4_to_int("127.0.0.1"), client_port))
            ra = nd.parse_router_advertisement(datagram.packet, datagram.header)
            self.assertEqual(ra.prefixes, ((IPv6Address("2001:0:7f00:1::").packed, 64),))
        self.assertEqual(service.status()["counters"]["rs-answered"], 2)
        ours = [e for e in events if e.get("log_namespace", "").startswith("teredo_appliance.roles.server")]
        self.assertEqual(len(ours), 1, ours)  # the start line; nothing per packet
        yield service.stopService()
        ours = [e for e in events if e.get("log_namespace", "").startswith("teredo_appliance.roles.server")]
        self.assertEqual(len(ours), 2, ours)

    @inlineCallbacks
    def test_non_global_source_is_a_counted_drop(self) -> Any:
        service = self.start(permissive=False)
        _, port = self.client()
        port.write(rs(), ("127.0.0.2", service.port))
        for _ in range(100):
            if service.counters.drops():
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(service.status()["drops"], {"source-not-global": 1})

    @inlineCallbacks
    def test_stop_frees_the_ports_for_a_restart(self) -> Any:
        service = self.start()
        yield service.stopService()
        again = self.start(port=service.port)  # a reload binds the same addresses again
        self.assertTrue(again.running)
        self.assertTrue(again.status()["addresses"]["raw_ipv6"])

    @inlineCallbacks
    def test_start_is_all_or_nothing(self) -> Any:
        require_raw_socket()
        port = _free_port()
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.2", port))
        service = ServerService(self.CONFIG, reactor, port=port)
        self.assertRaises(CannotListenError, service.privilegedStartService)
        self.assertFalse(service.raw.is_open)
        yield service.stopService()  # what a reload waits on before restoring the old server
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as primary:
            primary.bind(("127.0.0.1", port))  # the primary was released by then

    def test_status(self) -> None:
        service = SendOutcomeTests.service(FakeDatagramTransport())
        receive = service.protocols[PRIMARY].datagramReceived
        receive(MIREDO["rs-with-auth-nonce"].payload, ("198.18.0.100", 52732))
        receive(MIREDO["bubble-relay-to-server"].payload, ("198.18.0.10", 49030))
        receive(b"junk", ("198.18.0.100", 52732))
        status = service.status()
        self.assertEqual(status["role"], "server")
        self.assertEqual(status["addresses"], {"primary": "198.18.0.1:3544", "secondary": "198.18.0.2:3544",
                                               "raw_ipv6": False})
        self.assertEqual(status["prefix"], "2001:0:c612:1::/64")
        self.assertEqual(status["counters"], {"forwarded.teredo": 1, "rs-answered": 1})
        self.assertEqual(status["drops"], {"ipv6-short": 1})
        self.assertIsNone(status["uptime"])

