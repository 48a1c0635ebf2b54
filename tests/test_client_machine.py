"""roles/client_machine.py: RA acceptance rule by rule, retries, NAT type, refresh, failover."""

from __future__ import annotations

import dataclasses
import random
import struct
from ipaddress import IPv4Address, IPv6Address, IPv6Network

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.config_model import ClientConfig, ClientExtensions
from teredo_appliance.roles.client_failover import RETRY_BACKOFF_MAX, RETRY_BACKOFF_MIN
from teredo_appliance.roles.client_machine import (
    CONE_PROBE_QUIET,
    FAILOVER_CHECK_INTERVAL,
    NAT_CONE,
    NAT_NONE,
    NAT_RESTRICTED,
    NAT_SYMMETRIC,
    OFFLINE,
    PROBE,
    QUALIFICATION_TIMEOUT,
    QUALIFIED,
    RESOLVE_TIMEOUT,
    Qualification,
    Qualifier,
    RSKind,
)
from teredo_appliance.wire.address import FLAG_RANDOM_MASK, TEREDO_PREFIX, TeredoAddress, ipv4_to_int
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.ipv6 import build_icmpv6
from teredo_appliance.wire.nd import (
    ALL_ROUTERS,
    RS_SOURCE,
    RS_SOURCE_CONE,
    router_advertisement,
    router_solicitation,
    server_link_local,
    teredo_prefix64,
)
from teredo_appliance.wire.teredo import AuthIndicator, origin_indication, parse_datagram
from tests.vectors import MIREDO

SERVER = ipv4_to_int("198.18.0.1")
SERVER2 = ipv4_to_int("198.18.0.2")
FALLBACK = ipv4_to_int("198.18.0.5")
FALLBACK2 = ipv4_to_int("198.18.0.6")
MAPPED = (ipv4_to_int("198.18.0.100"), 52732)
PORT = 3544


def ra_packet(
    server: int = SERVER, destination: bytes = RS_SOURCE, prefixes: list[tuple[bytes, int]] | None = None,
    mtu: int | None = 1280, source: bytes | None = None, hop_limit: int = 255,
) -> bytes:
    """An RA with chosen options; the default equals wire.nd.router_advertisement's."""
    if prefixes is None:
        prefixes = [(teredo_prefix64(server), 64)]
    body = struct.pack("!BBHII", 0, 0, 0, 0, 2000)
    for prefix, length in prefixes:
        body += struct.pack("!BBBBIII16s", 3, 4, length, 0x40, 0xFFFFFFFF, 0xFFFFFFFF, 0, prefix)
    if mtu is not None:
        body += struct.pack("!BBHI", 5, 1, 0, mtu)
    source = server_link_local(server) if source is None else source
    return build_icmpv6(source, destination, 134, 0, body, hop_limit)


class Harness:
    """A Qualifier wired to lists, with a clock of our own."""

    def __init__(self, test: SynchronousTestCase, **config: object) -> None:
        settings: dict[str, object] = {"server_address": "198.18.0.1"}
        settings.update(config)
        self.config = ClientConfig(**settings)  # type: ignore[arg-type]
        self.sent: list[tuple[bytes, int, int]] = []
        self.resolving: list[str] = []
        self.changes: list[Qualification | None] = []
        self.local: int | None = ipv4_to_int("198.19.0.2")
        self.now = 0.0
        self.logged: list[tuple[str, str, dict[str, object]]] = []
        self.q = Qualifier(
            self.config, lambda p, ip, port: self.sent.append((p, ip, port)), self.resolving.append,
            self.changes.append, local_address=lambda server: self.local, rng=random.Random(4380),
            log=lambda level, format, **fields: self.logged.append((level, format, fields)),
        )

    def start(self) -> None:
        self.q.start(self.now)

    def advance(self, seconds: float) -> None:
        """Move the clock, firing every deadline on the way as a reactor would."""
        end = self.now + seconds
        while True:
            deadline = self.q.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.q.on_timer(self.now)
        self.now = end

    def take(self) -> list[tuple[bytes, int, int]]:
        sent, self.sent = self.sent, []
        return sent

    def rs(self, kind: str = "plain", to: int | None = None) -> tuple[bytes, int]:
        """The last RS of a kind sent (to `to`, if given): (nonce, destination IPv4)."""
        source = RS_SOURCE_CONE if kind == "cone" else RS_SOURCE
        for payload, ip, port in reversed(self.sent):
            d = parse_datagram(payload)
            if d.header.source == source and port == PORT and to in (None, ip):
                assert d.auth is not None
                return d.auth.nonce, ip
        raise AssertionError(f"no {kind} RS sent: {self.sent}")

    def answer(
        self, nonce: bytes, mapped: tuple[int, int] = MAPPED, source: tuple[int, int] = (SERVER, PORT),
        packet: bytes | None = None, confirmation: int = 0, origin: bool = True, auth: bool = True,
        server: int = SERVER,
    ) -> bool:
        data = AuthIndicator(nonce, confirmation).pack() if auth else b""
        data += origin_indication(*mapped) if origin else b""
        data += router_advertisement(server, RS_SOURCE, teredo_prefix64(server), 1280) if packet is None else packet
        return self.q.receive(parse_datagram(data), source[0], source[1], self.now)

    def qualify(self, mapped: tuple[int, int] = MAPPED, server: int = SERVER, secondary: int = SERVER2) -> None:
        """Answer the primary and then the secondary probe with the same mapping."""
        nonce, _ = self.rs(to=server)
        self.answer(nonce, mapped, (server, PORT), server=server)
        nonce, _ = self.rs(to=secondary)
        self.answer(nonce, mapped, (secondary, PORT), server=server)


class SolicitationTests(SynchronousTestCase):
    def test_first_round_sends_cone_then_plain_rs_with_fresh_nonces(self) -> None:
        h = Harness(self)
        h.start()
        sent = h.take()
        self.assertEqual([(ip, port) for _, ip, port in sent], [(SERVER, PORT), (SERVER, PORT)])
        cone, plain = (parse_datagram(p) for p, _, _ in sent)
        self.assertEqual(cone.packet, router_solicitation(cone=True))
        self.assertEqual(plain.packet, router_solicitation())
        assert cone.auth is not None and plain.auth is not None
        self.assertEqual(len(plain.auth.nonce), 8)
        self.assertNotEqual(cone.auth.nonce, plain.auth.nonce)
        self.assertEqual(h.q.state, PROBE)

    def test_rs_layout_matches_miredo(self) -> None:
        h = Harness(self)
        h.start()
        payload = h.take()[1][0]
        miredo = MIREDO["rs-with-auth-nonce"].payload
        self.assertEqual(len(payload), len(miredo))
        self.assertEqual(payload[:4] + payload[12:], miredo[:4] + miredo[12:])  # all but the nonce


class AcceptanceTests(SynchronousTestCase):
    """Each RFC 4380 §5.2.1 check on its own: the RA is dropped, counted, and nothing moves."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.start()
        self.nonce, _ = self.h.rs()

    def assertRejected(self, reason: str, **answer: object) -> None:
        self.assertTrue(self.h.answer(self.nonce, **answer))  # type: ignore[arg-type]
        self.assertEqual(self.h.q.counters.drops(), {"ra-" + reason: 1})
        self.assertEqual(self.h.q.state, PROBE)
        self.assertEqual(len(self.h.sent), 2)  # no secondary probe went out

    def test_valid_ra_moves_on_to_the_secondary(self) -> None:
        self.assertTrue(self.h.answer(self.nonce))
        self.assertEqual(self.h.q.counters.drops(), {})
        self.assertEqual(self.h.sent[-1][1:], (SERVER2, PORT))

    def test_miredo_ra_is_accepted(self) -> None:
        vector = MIREDO["ra-with-auth-origin"]
        d = parse_datagram(vector.payload)
        assert d.auth is not None
        self.h.q._main.round.nonces[d.auth.nonce] = RSKind.PLAIN  # type: ignore[union-attr]
        self.assertTrue(self.h.q.receive(d, *vector.source, self.h.now))
        self.assertEqual(self.h.q.counters.drops(), {})
        self.assertEqual(self.h.sent[-1][1:], (SERVER2, PORT))

    def test_wrong_port(self) -> None:
        self.assertRejected("port", source=(SERVER, 3545))

    def test_wrong_source_address(self) -> None:
        self.assertRejected("source", source=(SERVER2, PORT))

    def test_unknown_nonce(self) -> None:
        self.nonce = bytes(8)
        self.assertRejected("unexpected")

    def test_no_auth_is_not_an_ra_for_us(self) -> None:
        self.assertFalse(self.h.answer(self.nonce, auth=False))
        self.assertEqual(self.h.q.state, PROBE)

    def test_nonzero_confirmation(self) -> None:
        self.assertRejected("confirmation", confirmation=1)

    def test_no_origin_indication(self) -> None:
        self.assertRejected("no-origin", origin=False)

    def test_destination_not_rs_source(self) -> None:
        self.assertRejected("destination", packet=ra_packet(destination=RS_SOURCE_CONE))

    def test_two_prefixes(self) -> None:
        prefix = teredo_prefix64(SERVER)
        self.assertRejected("prefix-count", packet=ra_packet(prefixes=[(prefix, 64), (prefix, 64)]))

    def test_no_prefix(self) -> None:
        self.assertRejected("prefix-count", packet=ra_packet(prefixes=[]))

    def test_prefix_naming_another_server(self) -> None:
        self.assertRejected("prefix", packet=ra_packet(prefixes=[(teredo_prefix64(FALLBACK), 64)]))

    def test_prefix_other_than_the_configured_teredo_prefix(self) -> None:
        other = IPv6Address("3ffe:831f:c612:1::").packed  # the pre-RFC Teredo prefix, same server
        self.assertRejected("prefix", packet=ra_packet(prefixes=[(other, 64)]))

    def test_multicast_prefix(self) -> None:
        multicast = IPv6Address("ff02:0:c612:1::").packed
        self.assertRejected("prefix-scope", packet=ra_packet(prefixes=[(multicast, 64)]))

    def test_link_local_prefix(self) -> None:
        link_local = IPv6Address("fe80:0:c612:1::").packed
        self.assertRejected("prefix-scope", packet=ra_packet(prefixes=[(link_local, 64)]))

    def test_configured_prefix_is_accepted(self) -> None:
        h = Harness(self, prefix=IPv6Network("3ffe:831f::/32"))
        h.start()
        nonce, _ = h.rs()
        prefix = IPv6Address("3ffe:831f:c612:1::").packed
        self.assertTrue(h.answer(nonce, packet=ra_packet(prefixes=[(prefix, 64)])))
        self.assertEqual(h.q.counters.drops(), {})
        nonce, _ = h.rs(to=SERVER2)
        h.answer(nonce, (MAPPED), (SERVER2, PORT), packet=ra_packet(prefixes=[(prefix, 64)]))
        self.assertEqual(h.q.state, QUALIFIED)
        assert h.q.qualification is not None
        self.assertEqual(h.q.qualification.address[:4], prefix[:4])

    def test_prefix_not_a_64(self) -> None:
        self.assertRejected("prefix", packet=ra_packet(prefixes=[(teredo_prefix64(SERVER), 48)]))

    def test_mtu_too_small(self) -> None:
        self.assertRejected("mtu", packet=ra_packet(mtu=1279))

    def test_mtu_too_large(self) -> None:
        self.assertRejected("mtu", packet=ra_packet(mtu=65536))

    def test_hop_limit_not_255(self) -> None:
        self.assertRejected("hop-limit", packet=ra_packet(hop_limit=254))

    def test_bad_checksum(self) -> None:
        packet = bytearray(ra_packet())
        packet[-1] ^= 1
        self.assertRejected("checksum", packet=bytes(packet))

    def test_not_an_ra(self) -> None:
        self.assertRejected("not-ra", packet=build_icmpv6(RS_SOURCE, ALL_ROUTERS, 133, 0, bytes(4), 255))

    def test_source_not_link_local(self) -> None:
        self.assertRejected("source-not-link-local", packet=ra_packet(source=TeredoAddress(SERVER, 0, 1, 1).pack()))

    def test_mapped_address_not_global(self) -> None:
        self.assertRejected("mapped-not-global", mapped=(ipv4_to_int("10.0.0.1"), 1000))

    def test_no_mtu_option_means_1280(self) -> None:
        self.h.answer(self.nonce, packet=ra_packet(mtu=None))
        nonce, _ = self.h.rs()
        self.h.answer(nonce, source=(SERVER2, PORT), packet=ra_packet(mtu=None))
        assert self.h.q.qualification is not None
        self.assertEqual(self.h.q.qualification.mtu, 1280)

    def test_large_mtu_option_is_kept(self) -> None:
        self.h.answer(self.nonce, packet=ra_packet(mtu=1400))
        nonce, _ = self.h.rs()
        self.h.answer(nonce, source=(SERVER2, PORT))
        assert self.h.q.qualification is not None
        self.assertEqual(self.h.q.qualification.mtu, 1400)
        self.assertEqual(self.h.q.status()["advertised_mtu"], 1400)


class QualificationTests(SynchronousTestCase):
    def test_restricted_nat(self) -> None:
        h = Harness(self)
        h.start()
        h.qualify()
        q = h.q.qualification
        assert q is not None
        self.assertEqual(h.q.state, QUALIFIED)
        self.assertEqual(h.q.nat_type, NAT_RESTRICTED)
        self.assertEqual(h.changes, [q])
        self.assertEqual((q.server, q.mapping, q.prefix, q.mtu), (SERVER, MAPPED, TEREDO_PREFIX, 1280))
        decoded = TeredoAddress.unpack(q.address)
        self.assertEqual((decoded.server, decoded.mapped_ip, decoded.mapped_port), (SERVER, *MAPPED))
        self.assertEqual(decoded.flags & ~FLAG_RANDOM_MASK, 0)  # RFC 5991: C, R, U/G zero
        self.assertEqual(h.q.status()["nat_type"], "restricted")
        self.assertEqual(h.q.status()["mapped"], "198.18.0.100:52732")
        self.assertEqual(h.q.status()["advertised_mtu"], 1280)

    def test_flags_are_random(self) -> None:
        flags = set()
        for seed in range(8):
            h = Harness(self)
            h.q._rng = random.Random(seed)
            h.start()
            h.qualify()
            assert h.q.qualification is not None
            flags.add(h.q.qualification.flags)
        self.assertGreater(len(flags), 4)

    def test_symmetric_nat_qualifies_with_the_primary_mapping(self) -> None:
        """RFC 6081 §5.2: behind a symmetric NAT the address still comes from the primary's mapping."""
        h = Harness(self, bind_port=MAPPED[1])
        h.q._local_port = lambda: MAPPED[1]
        h.start()
        h.answer(h.rs()[0])
        h.answer(h.rs()[0], (MAPPED[0], MAPPED[1] + 1), (SERVER2, PORT))
        q = h.q.qualification
        assert q is not None
        self.assertEqual((q.mapping, q.nat_type, h.q.state), (MAPPED, NAT_SYMMETRIC, QUALIFIED))
        self.assertEqual(h.changes, [q])
        status = h.q.status()
        self.assertEqual((status["nat_type"], status["port_preserving"], status["sequential"]),
                         ("symmetric", True, True))
        h.take()
        h.advance(30)
        h.answer(h.rs()[0])  # refreshes ask the primary only: the mapping holds
        self.assertEqual(h.q.qualification, q)

    def test_symmetric_nat_stays_offline_and_says_so_without_the_extension(self) -> None:
        h = Harness(self, extensions=ClientExtensions(symmetric_nat=False))
        h.start()
        nonce, _ = h.rs()
        h.answer(nonce)
        nonce, _ = h.rs()
        h.answer(nonce, (MAPPED[0], MAPPED[1] + 1), (SERVER2, PORT))
        self.assertEqual(h.q.state, OFFLINE)
        self.assertEqual(h.q.nat_type, NAT_SYMMETRIC)
        self.assertIsNone(h.q.qualification)
        self.assertEqual(h.changes, [])
        self.assertEqual(h.q.status()["nat_type"], "symmetric")
        self.assertTrue(any(level == "warn" and "NAT type: symmetric" in format for level, format, _ in h.logged))
        h.take()
        h.advance(RETRY_BACKOFF_MAX - 1)
        self.assertEqual(h.sent, [])
        h.advance(1)
        self.assertEqual(h.rs()[1], SERVER)

    def test_cone_nat(self) -> None:
        h = Harness(self)
        h.start()
        nonce, _ = h.rs("cone")
        h.take()
        h.answer(nonce, source=(SERVER2, PORT), packet=ra_packet(destination=RS_SOURCE_CONE))
        self.assertEqual(h.q.state, QUALIFIED)
        self.assertEqual(h.q.nat_type, NAT_CONE)
        self.assertEqual(h.sent, [])  # no secondary probe needed
        assert h.q.qualification is not None
        self.assertFalse(TeredoAddress.unpack(h.q.qualification.address).cone)  # RFC 5991: C stays 0

    def test_cone_answer_after_contacting_the_secondary_is_ambiguous(self) -> None:
        h = Harness(self)
        h.start()
        cone, _ = h.rs("cone")
        plain, _ = h.rs()
        h.answer(plain)  # the secondary probe goes out: the NAT now lets .2 through
        h.answer(cone, source=(SERVER2, PORT), packet=ra_packet(destination=RS_SOURCE_CONE))
        self.assertEqual(h.q.counters.drops(), {"ra-cone-ambiguous": 1})
        self.assertEqual(h.q.state, PROBE)

    def test_no_cone_probe_while_the_secondary_may_be_open(self) -> None:
        def sources() -> list[bytes]:
            return [parse_datagram(p).header.source for p, _, _ in h.sent]

        h = Harness(self)
        h.start()
        h.qualify()
        h.take()
        h.q.network_changed(h.now)  # a new uplink: no NAT filter state of ours is left
        self.assertEqual(sources(), [RS_SOURCE_CONE, RS_SOURCE])
        h.qualify()
        h.take()
        h.advance(10)
        h.q._new_pass(h.now)  # a requalification on the same uplink
        self.assertEqual(sources(), [RS_SOURCE])
        h.qualify()
        h.take()
        h.now += CONE_PROBE_QUIET  # no timers: only the NAT's memory matters here
        h.q._new_pass(h.now)
        self.assertEqual(sources(), [RS_SOURCE_CONE, RS_SOURCE])

    def test_no_nat(self) -> None:
        h = Harness(self)
        h.local = MAPPED[0]
        h.start()
        nonce, _ = h.rs()
        h.take()
        h.answer(nonce)
        self.assertEqual(h.q.nat_type, NAT_NONE)
        self.assertEqual(h.q.state, QUALIFIED)
        self.assertEqual(h.sent, [])

    def test_configured_secondary_address(self) -> None:
        h = Harness(self, server_address2=IPv4Address("198.18.0.9"))
        h.start()
        h.qualify(secondary=ipv4_to_int("198.18.0.9"))
        self.assertEqual(h.q.state, QUALIFIED)


class RetryTests(SynchronousTestCase):
    def test_three_tries_four_seconds_apart_then_offline_with_backoff(self) -> None:
        h = Harness(self)
        h.start()
        times = []
        for _ in range(3):
            times.append(h.now)
            self.assertEqual(len(h.take()), 2)
            h.advance(QUALIFICATION_TIMEOUT - 0.1)
            self.assertEqual(h.sent, [])
            h.advance(0.1)
        self.assertEqual(times, [0.0, 4.0, 8.0])
        self.assertEqual(h.q.state, OFFLINE)
        self.assertEqual(h.sent, [])
        gaps = []
        for _ in range(7):
            failed_at = h.now
            while not h.sent:
                h.advance(1)
            gaps.append(h.now - failed_at)
            h.take()
            h.advance(3 * QUALIFICATION_TIMEOUT)  # fail this pass too
            h.take()
        self.assertEqual(gaps, [RETRY_BACKOFF_MIN, 10, 20, 40, 80, RETRY_BACKOFF_MAX, RETRY_BACKOFF_MAX])

    def test_answer_to_an_earlier_try_is_accepted(self) -> None:
        h = Harness(self)
        h.start()
        first, _ = h.rs()
        h.advance(QUALIFICATION_TIMEOUT)
        second, _ = h.rs()
        self.assertNotEqual(first, second)
        h.answer(first)
        self.assertEqual(h.sent[-1][1], SERVER2)

    def test_silent_secondary_fails_the_server(self) -> None:
        h = Harness(self)
        h.start()
        nonce, _ = h.rs()
        h.answer(nonce)
        h.advance(3 * QUALIFICATION_TIMEOUT)
        self.assertEqual(h.q.state, OFFLINE)
        self.assertEqual(h.q.counters["client.server_timeout"], 1)


class RefreshTests(SynchronousTestCase):
    def qualified(self, **config: object) -> Harness:
        h = Harness(self, **config)
        h.start()
        h.qualify()
        h.take()
        return h

    def test_refresh_within_75_to_100_percent_of_the_interval(self) -> None:
        delays = []
        for seed in range(30):
            h = self.qualified()
            h.q._rng = random.Random(seed)
            start = h.now
            h.advance(30)  # the first refresh uses the whole interval
            h.answer(h.rs()[0])
            refreshed = h.now
            h.take()
            while not h.sent:
                h.advance(0.5)
            delays.append(h.now - refreshed)
        self.assertTrue(all(22.5 <= d <= 30.0 for d in delays), delays)
        self.assertGreater(max(delays) - min(delays), 3.0)
        self.assertEqual(start, 0.0)

    def test_refresh_sends_only_a_plain_rs_to_the_primary(self) -> None:
        h = self.qualified()
        h.advance(30)
        sent = h.take()
        self.assertEqual(len(sent), 1)
        self.assertEqual(parse_datagram(sent[0][0]).header.source, RS_SOURCE)
        self.assertEqual(sent[0][1], SERVER)
        self.assertEqual(h.q.state, QUALIFIED)

    def test_traffic_from_the_server_postpones_the_refresh(self) -> None:
        h = self.qualified()
        h.advance(20)
        h.q.heard_from_server(h.now)
        h.advance(22)
        self.assertEqual(h.sent, [])

    def test_same_mapping_changes_nothing(self) -> None:
        h = self.qualified()
        before = h.q.qualification
        h.advance(30)
        h.answer(h.rs()[0])
        self.assertEqual(h.changes, [before])
        self.assertEqual(h.q.qualification, before)
        self.assertEqual(h.q.last_qualified, 30.0)

    def test_new_mapping_gives_a_new_address_and_new_flags(self) -> None:
        h = self.qualified()
        before = h.q.qualification
        assert before is not None
        h.advance(30)
        h.answer(h.rs()[0], mapped=(MAPPED[0], 40000))
        after = h.q.qualification
        assert after is not None
        self.assertEqual(h.changes, [before, after])
        self.assertEqual(after.mapped_port, 40000)
        self.assertNotEqual(after.flags, before.flags)
        self.assertEqual(after.nat_type, NAT_RESTRICTED)

    def test_flags_kept_when_requalifying_with_the_same_mapping(self) -> None:
        h = self.qualified()
        before = h.q.qualification
        h.q.network_changed(h.now)
        h.qualify()
        self.assertEqual(h.q.qualification, before)
        self.assertEqual(h.changes, [before])

    def test_unanswered_refresh_loses_connectivity(self) -> None:
        h = self.qualified()
        h.advance(30 + 3 * QUALIFICATION_TIMEOUT)
        self.assertEqual(h.changes[-1], None)
        self.assertEqual(h.q.state, OFFLINE)


class Internet:
    """Servers that answer our RS as a Miredo server behind a restricted NAT would, while alive.

    `run(h, seconds)` moves the clock in small steps and answers every plain RS sent to a
    live server's primary address and every RS sent to its secondary; cone RS stay
    unanswered (a restricted NAT). Everything sent is kept in `log` with its time.
    """

    def __init__(self) -> None:
        self.alive = {SERVER: True, FALLBACK: True}
        self.log: list[tuple[float, int, bytes]] = []  # (time, destination, RS source address)

    def run(self, h: Harness, seconds: float, step: float = 0.05) -> None:
        end = h.now + seconds
        while h.now < end:
            for payload, ip, _ in h.take():
                d = parse_datagram(payload)
                self.log.append((h.now, ip, d.header.source))
                server = {SERVER: SERVER, SERVER2: SERVER, FALLBACK: FALLBACK, FALLBACK2: FALLBACK}.get(ip)
                if server is None or not self.alive[server] or d.header.source == RS_SOURCE_CONE:
                    continue
                assert d.auth is not None
                h.answer(d.auth.nonce, source=(ip, PORT), server=server)
            h.advance(step)


class FailoverTests(SynchronousTestCase):
    interval = 30.0

    def harness(self) -> Harness:
        h = Harness(self, fallback_servers=("198.18.0.5",))
        h.start()
        return h

    def test_silent_first_server_moves_to_the_fallback(self) -> None:
        h = self.harness()
        h.advance(3 * QUALIFICATION_TIMEOUT)
        self.assertEqual(h.rs()[1], FALLBACK)
        h.qualify(server=FALLBACK, secondary=FALLBACK2)
        assert h.q.qualification is not None
        self.assertEqual(h.q.qualification.server, FALLBACK)
        self.assertEqual(h.q.status()["server"], "198.18.0.5")

    def test_with_fallbacks_the_server_is_checked_every_few_seconds(self) -> None:
        h = self.harness()
        h.qualify()
        h.take()
        h.advance(FAILOVER_CHECK_INTERVAL)
        sent = h.take()
        self.assertEqual([(parse_datagram(p).header.source, ip) for p, ip, _ in sent], [(RS_SOURCE, SERVER)])

    def test_without_fallbacks_the_refresh_keeps_rfc_4380_timing(self) -> None:
        h = Harness(self)
        h.start()
        h.qualify()
        h.take()
        h.advance(self.interval - 0.01)
        self.assertEqual(h.take(), [])
        h.advance(0.01 + 2 * QUALIFICATION_TIMEOUT)
        self.assertEqual(len(h.take()), 3)  # three tries, T apart, before giving up
        self.assertEqual(h.q.state, QUALIFIED)

    def test_dead_server_is_left_within_15_seconds_keeping_the_address_meanwhile(self) -> None:
        """Whenever the server dies, the fallback qualifies us within 15 s; no gap in between."""
        for seed in range(12):
            h = self.harness()
            h.q._rng = random.Random(seed)
            net = Internet()
            net.run(h, 2)
            self.assertEqual(h.q.qualification.server, SERVER)  # type: ignore[union-attr]
            net.run(h, seed * 1.37)  # die at a different point of the check cycle each time
            net.alive[SERVER] = False
            died = h.now
            while h.q.qualification is not None and h.q.qualification.server == SERVER:
                net.run(h, 0.1)
                self.assertLess(h.now - died, 30)
            self.assertLessEqual(h.now - died, 15.0, f"seed {seed}")
            self.assertNotIn(None, h.changes, f"seed {seed}: the address was dropped during the failover")

    def test_back_to_the_first_server_when_it_answers_again(self) -> None:
        h = self.harness()
        net = Internet()
        net.alive[SERVER] = False
        net.run(h, 3 * QUALIFICATION_TIMEOUT + 1)
        on_fallback = h.q.qualification
        assert on_fallback is not None
        self.assertEqual(on_fallback.server, FALLBACK)
        # The first server is probed every refresh interval, once; silence changes nothing.
        net.log.clear()
        net.run(h, self.interval)
        probes = [ip for _, ip, _ in net.log if ip == SERVER]
        self.assertEqual(len(probes), 2)  # cone + plain
        self.assertEqual(h.q.qualification, on_fallback)
        net.alive[SERVER] = True
        net.run(h, self.interval + QUALIFICATION_TIMEOUT + 1)  # a silent probe waits T, then an interval
        assert h.q.qualification is not None
        self.assertEqual(h.q.qualification.server, SERVER)
        self.assertEqual(h.changes, [on_fallback, h.q.qualification])
        net.log.clear()
        net.run(h, self.interval)
        # Checks of the first server only, and no more probing.
        self.assertEqual({(source, ip) for _, ip, source in net.log}, {(RS_SOURCE, SERVER)})

    def test_never_more_rs_than_rfc_4380_allows(self) -> None:
        """Servers dying and coming back: RS of one kind to one address stay T apart (RFC 4380 §5.2.1)."""
        h = self.harness()
        net = Internet()
        rng = random.Random(6081)
        for _ in range(40):
            net.alive[SERVER] = rng.random() < 0.6
            net.alive[FALLBACK] = rng.random() < 0.6
            net.run(h, rng.uniform(1, 40), step=0.25)
        last: dict[tuple[int, bytes], float] = {}
        for when, ip, source in net.log:
            previous = last.get((ip, source))
            self.assertTrue(previous is None or when - previous >= QUALIFICATION_TIMEOUT,
                            f"two RS to {ip} {when - (previous or 0):.2f} s apart")
            last[(ip, source)] = when
        self.assertGreater(len(net.log), 100)

    def test_answered_refreshes_on_the_fallback_do_not_postpone_the_probe(self) -> None:
        h = self.harness()
        net = Internet()
        net.run(h, 20)
        net.alive[SERVER] = False
        while h.q.qualification.server != FALLBACK:  # type: ignore[union-attr]
            net.run(h, 0.1)
        failed_over = h.now
        net.log.clear()
        net.run(h, 2 * self.interval)
        probes = sorted({when for when, ip, _ in net.log if ip == SERVER})
        self.assertAlmostEqual(probes[0], failed_over + self.interval, delta=0.2)

    def test_every_server_silent_starts_over_from_the_first(self) -> None:
        h = self.harness()
        h.advance(6 * QUALIFICATION_TIMEOUT)
        self.assertEqual(h.q.state, OFFLINE)
        h.take()
        h.advance(RETRY_BACKOFF_MIN)
        self.assertEqual(h.rs()[1], SERVER)

    def test_network_change_requalifies_at_once_keeping_the_address_meanwhile(self) -> None:
        h = self.harness()
        h.qualify()
        h.take()
        before = h.q.qualification
        h.advance(5)
        h.q.network_changed(h.now)
        self.assertEqual(h.rs()[1], SERVER)
        self.assertEqual(h.q.qualification, before)
        h.advance(3 * QUALIFICATION_TIMEOUT)
        self.assertIsNone(h.changes[-1])  # the first server is gone from the new uplink
        self.assertEqual(h.rs()[1], FALLBACK)


class ResolverTests(SynchronousTestCase):
    def test_names_are_resolved_at_run_time(self) -> None:
        h = Harness(self, server_address="teredo.example")
        h.start()
        self.assertEqual(h.resolving, ["teredo.example"])
        self.assertEqual(h.sent, [])
        self.assertEqual(h.q.state, PROBE)
        h.q.resolved("teredo.example", SERVER, h.now)
        h.qualify()
        self.assertEqual(h.q.state, QUALIFIED)

    def test_failed_resolution_tries_the_next_server(self) -> None:
        h = Harness(self, server_address="teredo.example", fallback_servers=("198.18.0.5",))
        h.start()
        h.q.resolved("teredo.example", None, h.now)
        self.assertEqual(h.rs()[1], FALLBACK)

    def test_resolver_silence_counts_as_failure(self) -> None:
        h = Harness(self, server_address="teredo.example")
        h.start()
        h.advance(RESOLVE_TIMEOUT)
        self.assertEqual(h.q.state, OFFLINE)
        self.assertEqual(h.q.counters["client.resolve_failed"], 1)

    def test_unanswered_refresh_re_resolves_and_tries_a_new_address(self) -> None:
        h = Harness(self, server_address="teredo.example", fallback_servers=("198.18.0.5",))
        h.start()
        h.q.resolved("teredo.example", SERVER, h.now)
        h.qualify()
        h.resolving.clear()
        h.take()
        h.advance(FAILOVER_CHECK_INTERVAL + QUALIFICATION_TIMEOUT)
        self.assertEqual(h.resolving, ["teredo.example"])
        moved = ipv4_to_int("198.18.0.7")
        h.q.resolved("teredo.example", moved, h.now)
        self.assertEqual(h.rs()[1], moved)

    def test_unanswered_refresh_same_address_goes_to_the_next_server(self) -> None:
        h = Harness(self, server_address="teredo.example", fallback_servers=("198.18.0.5",))
        h.start()
        h.q.resolved("teredo.example", SERVER, h.now)
        h.qualify()
        h.take()
        h.advance(FAILOVER_CHECK_INTERVAL + QUALIFICATION_TIMEOUT)
        h.q.resolved("teredo.example", SERVER, h.now)
        self.assertEqual(h.rs()[1], FALLBACK)

    def test_stop_forgets_everything(self) -> None:
        h = Harness(self)
        h.start()
        h.q.stop()
        self.assertIsNone(h.q.next_deadline())


class RobustnessTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=200), st.booleans(), st.integers(0, 3))
    def test_arbitrary_answers_with_our_nonce_never_raise(self, tail: bytes, origin: bool, mutate: int) -> None:
        h = Harness(self)
        h.start()
        nonce, _ = h.rs()
        packet = bytearray(ra_packet())
        if mutate:
            packet[-mutate * 7 % len(packet)] ^= 0xFF
        for body in (tail, bytes(packet) + tail, b"\x60" + tail):
            data = AuthIndicator(nonce).pack() + (origin_indication(*MAPPED) if origin else b"") + body
            try:
                datagram = parse_datagram(data)
            except ParseError:
                continue
            self.assertTrue(h.q.receive(datagram, SERVER, PORT, h.now))


class ReconfigureTests(SynchronousTestCase):
    """refresh_interval and fallback_servers change in place: the qualification stays."""

    def test_a_shorter_refresh_interval_is_heeded_at_once(self) -> None:
        h = Harness(self, refresh_interval=100.0)
        h.start()
        h.qualify()
        qualification = h.q.qualification
        h.take()
        h.advance(10)
        h.q.reconfigure(dataclasses.replace(h.config, refresh_interval=20.0), h.now)
        h.advance(20)
        self.assertEqual(h.rs()[1], SERVER)  # refreshed within the new interval, not at 100 s
        self.assertEqual(h.q.qualification, qualification)
        self.assertEqual(h.changes, [qualification])

    def test_a_new_fallback_chain_is_used_on_the_next_failover(self) -> None:
        h = Harness(self)
        h.start()
        h.qualify()
        h.take()
        new = dataclasses.replace(h.config, fallback_servers=("198.18.0.5",))
        self.assertTrue(h.q.can_reconfigure(new))
        h.q.reconfigure(new, h.now)
        self.assertEqual(h.q.state, QUALIFIED)
        h.advance(30 + 3 * QUALIFICATION_TIMEOUT)  # the first server went silent
        self.assertEqual(h.rs()[1], FALLBACK)

    def test_fallbacks_added_live_bring_the_failover_check_at_once(self) -> None:
        """With somewhere to go, the server is checked every few seconds from the reload on,
        and one unanswered check moves on, keeping the address meanwhile."""
        h = Harness(self)  # the default refresh interval (30 s) and no fallback
        h.start()
        h.qualify()
        qualification = h.q.qualification
        h.take()
        h.q.reconfigure(dataclasses.replace(h.config, fallback_servers=("198.18.0.5",)), h.now)
        h.advance(FAILOVER_CHECK_INTERVAL)
        self.assertEqual([ip for _, ip, _ in h.take()], [SERVER])  # a check, not the 22.5-30 s refresh
        h.advance(QUALIFICATION_TIMEOUT)
        self.assertEqual(h.rs()[1], FALLBACK)  # one check left unanswered: the next server
        self.assertEqual((h.q.state, h.q.qualification), (QUALIFIED, qualification))
        self.assertEqual(h.changes, [qualification])

    def test_the_chain_cannot_change_under_a_fallback_in_use(self) -> None:
        h = Harness(self, fallback_servers=("198.18.0.5",))
        h.start()
        h.advance(3 * QUALIFICATION_TIMEOUT)
        h.qualify(server=FALLBACK, secondary=FALLBACK2)
        self.assertFalse(h.q.can_reconfigure(dataclasses.replace(h.config, fallback_servers=())))
        self.assertTrue(h.q.can_reconfigure(dataclasses.replace(h.config, refresh_interval=10.0)))
