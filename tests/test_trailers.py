"""wire/trailers.py: RFC 6081 trailers byte for byte, malformed ones, and fuzzed parsing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.wire import teredo, trailers
from teredo_appliance.wire.address import ipv4_to_int
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.trailers import (
    AlternateAddressTrailer,
    NeighborDiscoveryTrailer,
    NonceTrailer,
    RandomPortTrailer,
    build_trailers,
    parse_trailers,
)

CLIENT_TEREDO = bytes.fromhex("20010000c61200011c6b320339edff9b")
LAN_PEER = ipv4_to_int("198.19.1.2")
UPNP_MAPPING = ipv4_to_int("198.18.0.200")

entries = st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(1, 0xFFFF))
known_trailers = st.one_of(
    st.binary(min_size=4, max_size=4).map(NonceTrailer),
    st.builds(
        AlternateAddressTrailer,
        st.lists(entries, min_size=1, max_size=4).map(tuple),
        st.integers(0, 0xFFFF),
    ),
    st.sampled_from([trailers.ND_SOLICITATION, trailers.ND_ADVERTISEMENT]).map(NeighborDiscoveryTrailer),
    st.integers(0, 0xFFFF).map(RandomPortTrailer),
)


class TrailerBytesTests(SynchronousTestCase):
    """Every trailer against the layout of RFC 6081 §4.2-§4.5, written out by hand."""

    def test_nonce(self) -> None:
        wire = bytes.fromhex("0104") + b"\xde\xad\xbe\xef"
        self.assertEqual(NonceTrailer(b"\xde\xad\xbe\xef").pack(), wire)
        self.assertEqual(parse_trailers(wire), [NonceTrailer(b"\xde\xad\xbe\xef")])

    def test_alternate_address_with_two_entries(self) -> None:
        trailer = AlternateAddressTrailer(((LAN_PEER, 3544), (UPNP_MAPPING, 40000)))
        wire = bytes.fromhex("030e0000c61301020dd8c61200c89c40")
        self.assertEqual(trailer.pack(), wire)
        self.assertEqual(parse_trailers(wire), [trailer])

    def test_alternate_address_lengths_are_8_14_20_26(self) -> None:
        for count in range(1, 5):
            packed = AlternateAddressTrailer(((LAN_PEER, 1),) * count).pack()
            self.assertEqual(packed[1], 2 + 6 * count)
            self.assertEqual(len(packed), 2 + packed[1])

    def test_neighbor_discovery_is_sent_with_three_bytes_of_padding(self) -> None:
        self.assertEqual(NeighborDiscoveryTrailer(trailers.ND_SOLICITATION).pack(), bytes.fromhex("040400000000"))
        self.assertEqual(NeighborDiscoveryTrailer(trailers.ND_ADVERTISEMENT).pack(), bytes.fromhex("040401000000"))
        self.assertEqual(parse_trailers(bytes.fromhex("040401000000")), [NeighborDiscoveryTrailer(1)])

    def test_neighbor_discovery_padding_is_ignored_and_may_be_absent(self) -> None:
        self.assertEqual(parse_trailers(bytes.fromhex("040401ffeedd")), [NeighborDiscoveryTrailer(1)])
        self.assertEqual(parse_trailers(bytes.fromhex("040100")), [NeighborDiscoveryTrailer(0)])

    def test_random_port(self) -> None:
        self.assertEqual(RandomPortTrailer(0x1234).pack(), bytes.fromhex("05021234"))
        self.assertEqual(parse_trailers(bytes.fromhex("05021234")), [RandomPortTrailer(0x1234)])

    def test_several_in_a_row_keep_their_order(self) -> None:
        sequence = [RandomPortTrailer(5000), NonceTrailer(b"abcd"), NeighborDiscoveryTrailer(0)]
        self.assertEqual(parse_trailers(build_trailers(sequence)), sequence)

    def test_unknown_types_are_skipped(self) -> None:
        wire = bytes.fromhex("0203aabbcc00000104") + b"wxyz" + bytes.fromhex("ff01ee")
        self.assertEqual(parse_trailers(wire), [NonceTrailer(b"wxyz")])

    def test_nothing_is_no_trailer(self) -> None:
        self.assertEqual(parse_trailers(b""), [])

    def test_builders_refuse_what_they_could_not_send(self) -> None:
        self.assertRaises(ValueError, NonceTrailer(b"abc").pack)
        self.assertRaises(ValueError, AlternateAddressTrailer(()).pack)
        self.assertRaises(ValueError, AlternateAddressTrailer(((1, 1),) * 5).pack)


class MalformedTrailerTests(SynchronousTestCase):
    def _reason(self, data: bytes) -> str:
        with self.assertRaises(ParseError) as caught:
            parse_trailers(data)
        return caught.exception.reason

    def test_truncated(self) -> None:
        self.assertEqual(self._reason(b"\x01"), "trailer-truncated")
        self.assertEqual(self._reason(b"\x01\x04abc"), "trailer-truncated")
        self.assertEqual(self._reason(b"\x77\x05abc"), "trailer-truncated")  # unknown, still framed
        self.assertEqual(self._reason(NonceTrailer(b"abcd").pack() + b"\x05"), "trailer-truncated")

    def test_bad_length_for_a_known_type(self) -> None:
        self.assertEqual(self._reason(b"\x01\x03abc"), "nonce-trailer-length")
        self.assertEqual(self._reason(b"\x01\x05abcde"), "nonce-trailer-length")
        self.assertEqual(self._reason(b"\x04\x00"), "nd-option-trailer-length")
        self.assertEqual(self._reason(b"\x04\x02\x00\x00"), "nd-option-trailer-length")
        self.assertEqual(self._reason(b"\x04\x05\x00\x00\x00\x00\x00"), "nd-option-trailer-length")
        self.assertEqual(self._reason(b"\x05\x01\x00"), "random-port-trailer-length")
        self.assertEqual(self._reason(b"\x05\x03\x00\x00\x00"), "random-port-trailer-length")

    def test_alternate_address_entry_count_out_of_range(self) -> None:
        self.assertEqual(self._reason(b"\x03\x02\x00\x00"), "alternate-address-trailer-length")  # no entry
        self.assertEqual(self._reason(b"\x03\x00"), "alternate-address-trailer-length")
        five = b"\x03\x20\x00\x00" + bytes.fromhex("c61301020dd8") * 5
        self.assertEqual(self._reason(five), "alternate-address-trailer-length")
        ragged = b"\x03\x09\x00\x00" + bytes.fromhex("c61301020dd8") + b"\x00"
        self.assertEqual(self._reason(ragged), "alternate-address-trailer-length")

    def test_alternate_address_port_zero(self) -> None:
        self.assertEqual(self._reason(b"\x03\x08\x00\x00\xc6\x13\x01\x02\x00\x00"), "alternate-address-port-zero")

    def test_unknown_discovery_type(self) -> None:
        self.assertEqual(self._reason(b"\x04\x01\x02"), "nd-option-trailer-type")


class DatagramTrailerTests(SynchronousTestCase):
    """The Teredo parser hands the trailer bytes on untouched, for forwarding."""

    def test_bubble_with_trailers(self) -> None:
        bubble = teredo.build_bubble(bytes(16), CLIENT_TEREDO)
        tail = build_trailers([NonceTrailer(b"1234"), RandomPortTrailer(40000)])
        datagram = teredo.parse_datagram(bubble + tail)
        self.assertEqual(datagram.packet, bubble)
        self.assertEqual(datagram.trailer, tail)
        self.assertEqual(parse_trailers(datagram.trailer), [NonceTrailer(b"1234"), RandomPortTrailer(40000)])

    def test_no_trailer_no_copy(self) -> None:
        bubble = teredo.build_bubble(bytes(16), CLIENT_TEREDO)
        datagram = teredo.parse_datagram(bubble)
        self.assertIs(datagram.packet, bubble)
        self.assertEqual(datagram.trailer, b"")

    def test_trailer_after_origin_indication(self) -> None:
        bubble = teredo.build_bubble(bytes(16), CLIENT_TEREDO)
        tail = NeighborDiscoveryTrailer(trailers.ND_ADVERTISEMENT).pack()
        datagram = teredo.parse_datagram(teredo.origin_indication(UPNP_MAPPING, 40000) + bubble + tail)
        self.assertEqual(datagram.origin, teredo.OriginIndication(UPNP_MAPPING, 40000))
        self.assertEqual(datagram.trailer, tail)


class TrailerFuzzTests(SynchronousTestCase):
    @given(st.lists(known_trailers, max_size=6))
    def test_known_sequences_round_trip(self, sequence: list[trailers.Trailer]) -> None:
        wire = build_trailers(sequence)
        self.assertEqual(parse_trailers(wire), sequence)
        self.assertEqual(build_trailers(parse_trailers(wire)), wire)

    @given(st.binary(max_size=80))
    def test_arbitrary_bytes_raise_only_parse_error(self, data: bytes) -> None:
        try:
            parsed = parse_trailers(data)
        except ParseError as error:
            self.assertTrue(error.reason)
        else:
            self.assertLessEqual(len(build_trailers(parsed)), len(data))
