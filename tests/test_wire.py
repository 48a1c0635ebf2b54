"""wire/: RFC vectors, Miredo's real datagrams rebuilt byte for byte, and fuzzed parsers."""

from __future__ import annotations

import contextlib
from ipaddress import IPv6Address, IPv6Network

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.wire import ipv6, nd, teredo
from teredo_appliance.wire.address import (
    FLAG_CONE,
    FLAG_RANDOM_MASK,
    TeredoAddress,
    int_to_ipv4,
    ipv4_to_int,
    is_global_ipv4,
    random_flags,
    teredo_mapping,
    teredo_server,
)
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.prefixes import PrefixFilter
from teredo_appliance.wire.scope import is_global_unicast
from tests.vectors import MIREDO

SERVER = ipv4_to_int("198.18.0.1")
CLIENT_TEREDO = bytes.fromhex("20010000c61200011c6b320339edff9b")
ipv4s = st.integers(0, 0xFFFFFFFF)
ports = st.integers(0, 0xFFFF)
addresses16 = st.binary(min_size=16, max_size=16)


class AddressTests(SynchronousTestCase):
    def test_rfc4380_example(self) -> None:
        """RFC 4380 §4: server 65.54.227.120, cone, 192.0.2.45:40000."""
        address = TeredoAddress(ipv4_to_int("65.54.227.120"), FLAG_CONE, 40000, ipv4_to_int("192.0.2.45"))
        self.assertEqual(str(address), "2001:0:4136:e378:8000:63bf:3fff:fdd2")
        self.assertTrue(address.cone)
        decoded = TeredoAddress.unpack(address.pack())
        self.assertEqual(decoded, address)

    def test_miredo_client_address(self) -> None:
        decoded = TeredoAddress.unpack(CLIENT_TEREDO)
        self.assertEqual(int_to_ipv4(decoded.server), "198.18.0.1")
        self.assertEqual(int_to_ipv4(decoded.mapped_ip), "198.18.0.100")
        self.assertEqual(decoded.mapped_port, 52732)
        self.assertEqual(decoded.flags, 0x1C6B)
        self.assertFalse(decoded.cone)
        self.assertEqual(teredo_mapping(CLIENT_TEREDO), (decoded.mapped_ip, 52732))
        self.assertEqual(teredo_server(CLIENT_TEREDO), SERVER)

    def test_rfc5991_flags_keep_reserved_bits_clear(self) -> None:
        self.assertEqual(random_flags(0xFFFF), FLAG_RANDOM_MASK)
        self.assertEqual(random_flags(0xFFFF) & (FLAG_CONE | 0x4000 | 0x0300), 0)

    def test_global_ipv4(self) -> None:
        for text in ("0.1.2.3", "10.0.0.1", "127.0.0.1", "169.254.1.1", "172.16.0.1", "172.31.255.255",
                     "192.168.1.1", "192.88.99.1", "224.0.0.253", "239.1.1.1", "255.255.255.255"):
            self.assertFalse(is_global_ipv4(ipv4_to_int(text)), text)
        for text in ("198.18.0.1", "198.19.255.254", "192.0.2.45", "8.8.8.8", "172.32.0.1", "65.54.227.120"):
            self.assertTrue(is_global_ipv4(ipv4_to_int(text)), text)

    def test_ipv4_literal_is_strict(self) -> None:
        for bad in ("1.2.3", "300.1.1.1", "example.net", ""):
            self.assertRaises(OSError, ipv4_to_int, bad)

    @given(ipv4s, st.integers(0, 0xFFFF), ports, ipv4s)
    def test_address_round_trip(self, server: int, flags: int, port: int, ip: int) -> None:
        address = TeredoAddress(server, flags, port, ip)
        packed = address.pack()
        self.assertEqual(len(packed), 16)
        self.assertEqual(TeredoAddress.unpack(packed), address)
        self.assertEqual(teredo_mapping(packed), (ip, port))


class OriginAndAuthTests(SynchronousTestCase):
    def test_rfc4380_origin_vector(self) -> None:
        """RFC 4380 §5.1.1: 1.2.3.4:337 -> 0000 feae fefd fcfb."""
        self.assertEqual(teredo.origin_indication(ipv4_to_int("1.2.3.4"), 337).hex(), "0000feaefefdfcfb")

    @given(ipv4s, ports, st.binary(min_size=8, max_size=8), st.integers(0, 255),
           st.binary(max_size=255), st.binary(max_size=255))
    def test_headers_round_trip(self, ip, port, nonce, confirmation, client_id, auth_value) -> None:
        auth = teredo.AuthIndicator(nonce, confirmation, client_id, auth_value)
        bubble = teredo.build_bubble(bytes(16), CLIENT_TEREDO)
        datagram = teredo.parse_datagram(auth.pack() + teredo.origin_indication(ip, port) + bubble)
        self.assertEqual(datagram.auth, auth)
        self.assertEqual(datagram.origin, teredo.OriginIndication(ip, port))
        self.assertEqual(datagram.packet, bubble)


class MiredoVectorTests(SynchronousTestCase):
    """Every captured Miredo datagram parses; what we can build, we build byte-identical."""

    def test_every_record_parses(self) -> None:
        self.assertEqual(len(MIREDO), 9)
        for vector in MIREDO.values():
            datagram = teredo.parse_datagram(vector.payload)
            self.assertEqual(datagram.header.payload_length + ipv6.HEADER_LENGTH, len(datagram.packet), vector.name)

    def test_router_solicitation_rebuilds(self) -> None:
        vector = MIREDO["rs-with-auth-nonce"]
        datagram = teredo.parse_datagram(vector.payload)
        self.assertTrue(nd.is_router_solicitation(datagram.packet, datagram.header))
        self.assertEqual(datagram.auth.pack() + nd.router_solicitation(), vector.payload)
        self.assertEqual(nd.router_solicitation()[42:44].hex(), "7d37")

    def test_router_advertisement_rebuilds(self) -> None:
        vector = MIREDO["ra-with-auth-origin"]
        datagram = teredo.parse_datagram(vector.payload)
        self.assertEqual(datagram.origin, teredo.OriginIndication(*MIREDO["rs-with-auth-nonce"].source))
        ra = nd.parse_router_advertisement(datagram.packet, datagram.header)
        self.assertEqual(ra.source, nd.server_link_local(SERVER))
        self.assertEqual(ra.destination, nd.RS_SOURCE)
        self.assertEqual(ra.prefixes, ((nd.teredo_prefix64(SERVER), 64),))
        self.assertEqual(ra.mtu, 1280)
        rebuilt = (
            datagram.auth.pack()
            + datagram.origin.pack()
            + nd.router_advertisement(SERVER, ra.destination, nd.teredo_prefix64(SERVER), 1280)
        )
        self.assertEqual(rebuilt, vector.payload)

    def test_bubbles_rebuild(self) -> None:
        for name in ("bubble-relay-to-server", "bubble-forwarded-with-origin", "bubble-client-to-relay"):
            vector = MIREDO[name]
            datagram = teredo.parse_datagram(vector.payload)
            self.assertTrue(teredo.is_bubble(datagram.header), name)
            origin = datagram.origin.pack() if datagram.origin else b""
            rebuilt = origin + teredo.build_bubble(datagram.header.source, datagram.header.destination)
            self.assertEqual(rebuilt, vector.payload, name)

    def test_forwarded_bubble_names_the_relay(self) -> None:
        datagram = teredo.parse_datagram(MIREDO["bubble-forwarded-with-origin"].payload)
        self.assertEqual(datagram.origin, teredo.OriginIndication(*MIREDO["bubble-relay-to-server"].source))

    def test_echo_and_data_checksums(self) -> None:
        for name in ("echo-test-via-server", "echo-reply-relay-to-client", "data-client-to-v6host",
                     "data-v6host-to-client"):
            datagram = teredo.parse_datagram(MIREDO[name].payload)
            self.assertTrue(ipv6.checksum_ok(datagram.packet, datagram.header), name)
            echo = ipv6.parse_echo(datagram.packet, datagram.header)
            self.assertIsNotNone(echo, name)
            rebuilt = ipv6.build_echo(
                datagram.header.source, datagram.header.destination, echo.identifier, echo.sequence,
                echo.data, echo.reply, datagram.header.hop_limit,
            )
            # Only the flow label differs from Miredo's relay (it copies the native host's).
            self.assertEqual(rebuilt[4:], datagram.packet[4:], name)

    def test_echo_reply_matches_request(self) -> None:
        request = teredo.parse_datagram(MIREDO["echo-test-via-server"].payload)
        reply = teredo.parse_datagram(MIREDO["echo-reply-relay-to-client"].payload)
        self.assertEqual(
            ipv6.parse_echo(request.packet, request.header).data, ipv6.parse_echo(reply.packet, reply.header).data
        )


class DatagramRulesTests(SynchronousTestCase):
    def _reason(self, data: bytes) -> str:
        with self.assertRaises(ParseError) as caught:
            teredo.parse_datagram(data)
        return caught.exception.reason

    def test_drop_reasons(self) -> None:
        bubble = teredo.build_bubble(bytes(16), CLIENT_TEREDO)
        self.assertEqual(self._reason(b""), "ipv6-short")
        self.assertEqual(self._reason(b"\x00\x01\x00\x00"), "auth-truncated")
        self.assertEqual(self._reason(b"\x00\x01\x05\x00" + bytes(12)), "auth-truncated")
        self.assertEqual(self._reason(b"\x00\x00\x01\x02"), "origin-truncated")
        self.assertEqual(self._reason(b"\x45" + bubble[1:]), "not-ipv6")
        self.assertEqual(self._reason(bubble[:39]), "ipv6-short")
        echo = ipv6.build_echo(CLIENT_TEREDO, CLIENT_TEREDO, 1, 1, b"abcd")
        self.assertEqual(self._reason(echo[:-1]), "ipv6-truncated")
        self.assertEqual(self._reason(b"\x00\x02" + bubble), "not-ipv6")

    def test_trailers_are_tolerated_and_trimmed(self) -> None:
        """RFC 6081 puts trailers after a bubble; they are not part of the IPv6 packet."""
        bubble = teredo.build_bubble(bytes(16), CLIENT_TEREDO)
        datagram = teredo.parse_datagram(bubble + b"\x01\x02trailer")
        self.assertEqual(datagram.packet, bubble)
        self.assertEqual(datagram.trailer, b"\x01\x02trailer")  # kept apart, for a server to forward
        self.assertTrue(teredo.is_bubble(datagram.header))
        self.assertEqual(teredo.parse_datagram(bubble).trailer, b"")

    def test_bubble_hop_limit_is_not_checked(self) -> None:
        bubble = bytearray(teredo.build_bubble(bytes(16), CLIENT_TEREDO))
        bubble[7] = 17
        self.assertTrue(teredo.is_bubble(teredo.parse_datagram(bytes(bubble)).header))

    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_raise_only_parse_error(self, data: bytes) -> None:
        try:
            datagram = teredo.parse_datagram(data)
        except ParseError as error:
            self.assertTrue(error.reason)
        else:
            self.assertEqual(len(datagram.packet), ipv6.HEADER_LENGTH + datagram.header.payload_length)

    @given(st.sampled_from([b"\x00\x01", b"\x00\x00", b"\x60", b"\x00\x01\x00\x00"]), st.binary(max_size=120))
    def test_header_like_prefixes_raise_only_parse_error(self, start: bytes, rest: bytes) -> None:
        with contextlib.suppress(ParseError):
            teredo.parse_datagram(start + rest)


class RouterAdvertisementRulesTests(SynchronousTestCase):
    def _ra(self) -> bytes:
        return nd.router_advertisement(SERVER, nd.RS_SOURCE, nd.teredo_prefix64(SERVER), 1400)

    def test_parse_our_ra(self) -> None:
        packet = self._ra()
        ra = nd.parse_router_advertisement(packet, ipv6.parse_header(packet))
        self.assertEqual(ra.mtu, 1400)

    def test_bad_checksum_and_hop_limit(self) -> None:
        packet = bytearray(self._ra())
        packet[-1] ^= 1
        with self.assertRaises(ParseError) as caught:
            nd.parse_router_advertisement(bytes(packet), ipv6.parse_header(bytes(packet)))
        self.assertEqual(caught.exception.reason, "ra-checksum")
        packet = bytearray(self._ra())
        packet[7] = 64
        with self.assertRaises(ParseError) as caught:
            nd.parse_router_advertisement(bytes(packet), ipv6.parse_header(bytes(packet)))
        self.assertEqual(caught.exception.reason, "ra-hop-limit")

    def test_rs_is_not_an_ra(self) -> None:
        packet = nd.router_solicitation(cone=True)
        header = ipv6.parse_header(packet)
        self.assertEqual(header.source.hex(), "fe80000000000000800054455245444f")
        self.assertRaises(ParseError, nd.parse_router_advertisement, packet, header)

    @given(st.binary(min_size=16, max_size=120))
    def test_arbitrary_icmp_bodies_raise_only_parse_error(self, body: bytes) -> None:
        packet = ipv6.build_packet(nd.server_link_local(SERVER), nd.RS_SOURCE, ipv6.NEXT_HEADER_ICMPV6,
                                   b"\x86\x00" + body, 255)
        with contextlib.suppress(ParseError):
            nd.parse_router_advertisement(packet, ipv6.parse_header(packet))


class Icmpv6ErrorTests(SynchronousTestCase):
    SOURCE = bytes.fromhex("20010db8000100000000000000000002")

    def test_unreachable_quotes_at_most_1280(self) -> None:
        big = ipv6.build_packet(self.SOURCE, CLIENT_TEREDO, 17, bytes(1400))
        error = ipv6.build_unreachable(nd.RS_SOURCE, big, self.SOURCE, ipv6.UNREACHABLE_ADDRESS)
        self.assertEqual(len(error), 1280)
        header = ipv6.parse_header(error)
        self.assertTrue(ipv6.checksum_ok(error, header))
        self.assertEqual(error[40:42], bytes((ipv6.ICMPV6_DEST_UNREACHABLE, ipv6.UNREACHABLE_ADDRESS)))
        self.assertEqual(ipv6.quoted_packet(error, header), big[: 1280 - 48])

    def test_packet_too_big(self) -> None:
        small = ipv6.build_echo(self.SOURCE, CLIENT_TEREDO, 7, 9, b"x" * 10)
        error = ipv6.build_packet_too_big(nd.RS_SOURCE, small, self.SOURCE, 1280)
        header = ipv6.parse_header(error)
        self.assertTrue(ipv6.checksum_ok(error, header))
        self.assertEqual(error[44:48], (1280).to_bytes(4, "big"))
        self.assertEqual(ipv6.quoted_packet(error, header), small)

    def test_no_error_about_an_error_or_multicast(self) -> None:
        echo = ipv6.build_echo(self.SOURCE, CLIENT_TEREDO, 1, 1, b"")
        self.assertTrue(ipv6.error_allowed(echo, ipv6.parse_header(echo)))
        error = ipv6.build_unreachable(nd.RS_SOURCE, echo, self.SOURCE, 3)
        self.assertFalse(ipv6.error_allowed(error, ipv6.parse_header(error)))
        multicast = ipv6.build_echo(self.SOURCE, nd.ALL_ROUTERS, 1, 1, b"")
        self.assertFalse(ipv6.error_allowed(multicast, ipv6.parse_header(multicast)))

    @given(addresses16, addresses16, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=64))
    def test_echo_round_trip(self, source, destination, identifier, sequence, data) -> None:
        packet = ipv6.build_echo(source, destination, identifier, sequence, data, reply=True)
        header = ipv6.parse_header(packet)
        self.assertTrue(ipv6.checksum_ok(packet, header))
        self.assertEqual(ipv6.parse_echo(packet, header), ipv6.Echo(True, identifier, sequence, data))


# RFC 4291 §2.4 and friends, written as networks: the oracle for the byte-level predicate.
NOT_GLOBAL = [IPv6Network(n) for n in ("ff00::/8", "fe80::/10", "fec0::/10", "fc00::/7", "::/96", "::ffff:0:0/96")]
_NEAR_EDGES = ("fe00::", "febf:ffff::", "fbff::1", "::1:0:0:1", "::fffe:0:1", "2001::1", "2001:db8::1", "64:ff9b::1",
               "fe7f::1")
_edges = st.sampled_from(
    [n.network_address.packed for n in NOT_GLOBAL]
    + [n.broadcast_address.packed for n in NOT_GLOBAL]
    + [IPv6Address(a).packed for a in _NEAR_EDGES]
)


class ScopeTests(SynchronousTestCase):
    def test_examples(self) -> None:
        for text in ("2001:db8::1", "2001:0:c612:1::1", "2a00::1", "64:ff9b::198.18.0.1", "::1:0:0:0:1"):
            self.assertTrue(is_global_unicast(IPv6Address(text).packed), text)
        for text in ("::", "::1", "::198.18.0.1", "::ffff:198.18.0.1", "fe80::1", "febf::1", "fec0::1", "fc00::1",
                     "fdff::1", "ff02::1", "ff0e::1"):
            self.assertFalse(is_global_unicast(IPv6Address(text).packed), text)

    @given(addresses16 | _edges)
    def test_agrees_with_the_networks(self, address: bytes) -> None:
        expected = not any(IPv6Address(address) in network for network in NOT_GLOBAL)
        self.assertEqual(is_global_unicast(address), expected, IPv6Address(address))


class EchoTests(SynchronousTestCase):
    def test_is_echo(self) -> None:
        for reply in (False, True):
            packet = ipv6.build_echo(CLIENT_TEREDO, CLIENT_TEREDO, 1, 2, b"", reply=reply)
            self.assertTrue(ipv6.is_echo(packet, ipv6.parse_header(packet)))
        for packet in (
            ipv6.build_icmpv6(CLIENT_TEREDO, CLIENT_TEREDO, 128, 1, bytes(4)),  # a code
            ipv6.build_icmpv6(CLIENT_TEREDO, CLIENT_TEREDO, 136, 0, bytes(20)),  # NA
            ipv6.build_packet(CLIENT_TEREDO, CLIENT_TEREDO, 58, bytes((128, 0, 0, 0))),  # header cut short
            ipv6.build_packet(CLIENT_TEREDO, CLIENT_TEREDO, 17, bytes((128, 0)) + bytes(6)),  # not ICMPv6
        ):
            self.assertFalse(ipv6.is_echo(packet, ipv6.parse_header(packet)))

# Prefixes that share leading bits with each other and with the addresses drawn, so that
# the deep levels of the filter's trie are exercised.
_NEAR = st.sampled_from([0, 0x2001 << 112, 0x2001_0DB8 << 96, 0x2002 << 112, 0xFE80 << 112, 0xFFFF << 32])


@st.composite
def _prefixes(draw: st.DrawFn) -> IPv6Network:
    length = draw(st.integers(0, 128))
    base = draw(_NEAR) ^ draw(st.integers(0, 2**128 - 1)) >> draw(st.integers(0, 128))
    return IPv6Network((base, length), strict=False)


class PrefixFilterTests(SynchronousTestCase):
    def test_relay_defaults(self) -> None:
        served = PrefixFilter([IPv6Network("2000::/3")], [IPv6Network("2001::/32"), IPv6Network("2002::/16")])
        verdicts = {a: served.allows(IPv6Address(a).packed) for a in ("2001:db8::1", "2001::1", "2002::1", "3fff::1",
                                                                          "4000::1", "fd00::1", "2001:0:1::")}
        self.assertEqual(verdicts, {"2001:db8::1": True, "2001::1": False, "2002::1": False, "3fff::1": True,
                                    "4000::1": False, "fd00::1": False, "2001:0:1::": False})

    @settings(max_examples=300, deadline=None)
    @given(st.lists(_prefixes(), max_size=4), st.lists(_prefixes(), max_size=4),
           st.lists(st.one_of(_NEAR, st.integers(0, 2**128 - 1)), min_size=1, max_size=20))
    def test_agrees_with_ipaddress(self, allow: list[IPv6Network], deny: list[IPv6Network],
                                   addresses: list[int]) -> None:
        prefix_filter = PrefixFilter(allow, deny)
        for value in addresses:
            address = IPv6Address(value)
            expected = any(address in p for p in allow) and not any(address in p for p in deny)
            self.assertEqual(prefix_filter.allows(address.packed), expected, str(address))
