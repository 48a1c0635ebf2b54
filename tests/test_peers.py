"""peers.py: every rule of the peer table, then random operation sequences against a model."""

from __future__ import annotations

from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.peers import (
    ADDRESSES_PER_MAPPING,
    BUBBLE_INTERVAL,
    BUBBLE_LIMIT,
    BUBBLE_WINDOW,
    IDLE_TIMEOUT,
    QUEUE_BYTES,
    PeerTable,
)

MAPPING = ("198.18.0.100", 52732)


def addr(n: int) -> bytes:
    return bytes.fromhex("20010000c6120001") + n.to_bytes(8, "big")


class TrustTests(SynchronousTestCase):
    def test_flush_in_original_order(self) -> None:
        table = PeerTable(8)
        peer = table.get_or_create(addr(1), MAPPING, 0.0)
        packets = [b"first", b"second", b"third"]
        for packet in packets:
            self.assertTrue(table.enqueue(peer, packet))
        self.assertEqual(table.trust(addr(1), ("198.18.0.7", 1000), 1.0), packets)
        self.assertTrue(peer.trusted)
        self.assertEqual(peer.mapping, ("198.18.0.7", 1000))
        self.assertEqual(peer.queued, 0)
        self.assertEqual(table.stats()["queued_bytes"], 0)
        self.assertEqual(table.trust(addr(1), MAPPING, 2.0), [])

    def test_trust_unknown_creates_trusted_peer(self) -> None:
        table = PeerTable(8)
        self.assertEqual(table.trust(addr(2), MAPPING, 5.0), [])
        peer = table.get(addr(2))
        assert peer is not None
        self.assertTrue(peer.trusted)
        self.assertEqual(peer.last_rx, 5.0)
        self.assertEqual(table.stats()["trusted"], 1)

    def test_trust_ends_round_and_clears_nonce(self) -> None:
        table = PeerTable(8)
        peer = table.get_or_create(addr(1), None, 0.0)
        peer.nonce = b"\x01" * 8
        self.assertTrue(table.try_bubble(peer, 0.0))
        table.trust(addr(1), MAPPING, 1.0)
        self.assertEqual((peer.attempts, peer.bubbles, peer.nonce), (0, 0, None))
        self.assertEqual(table.due_for_retry(10.0), [])

    def test_get_or_create_keeps_existing(self) -> None:
        table = PeerTable(8)
        peer = table.get_or_create(addr(1), MAPPING, 0.0)
        self.assertIs(table.get_or_create(addr(1), ("198.18.0.9", 1), 1.0), peer)
        self.assertEqual(peer.mapping, MAPPING)
        self.assertIsNone(table.get(addr(2)))


class QueueTests(SynchronousTestCase):
    def test_per_peer_byte_bound(self) -> None:
        table = PeerTable(8)
        peer = table.get_or_create(addr(1), MAPPING, 0.0)
        self.assertTrue(table.enqueue(peer, bytes(QUEUE_BYTES - 100)))
        self.assertFalse(table.enqueue(peer, bytes(101)))
        self.assertTrue(table.enqueue(peer, bytes(100)))
        self.assertFalse(table.enqueue(peer, b"x"))
        self.assertEqual(peer.queued, QUEUE_BYTES)
        self.assertEqual(table.stats()["queued_bytes"], QUEUE_BYTES)

    def test_full_mtu_packet_fits_default_queue(self) -> None:
        table = PeerTable(8)
        self.assertTrue(table.enqueue(table.get_or_create(addr(1), MAPPING, 0.0), bytes(1280)))

    def test_total_byte_bound(self) -> None:
        table = PeerTable(8, queue_bytes=100, total_queue_bytes=250)
        peers = [table.get_or_create(addr(n), MAPPING, 0.0) for n in range(3)]
        self.assertTrue(table.enqueue(peers[0], bytes(100)))
        self.assertTrue(table.enqueue(peers[1], bytes(100)))
        self.assertFalse(table.enqueue(peers[2], bytes(51)))
        self.assertTrue(table.enqueue(peers[2], bytes(50)))
        self.assertEqual(table.stats()["queued_bytes"], 250)


class ExpiryTests(SynchronousTestCase):
    def test_expires_exactly_at_timeout(self) -> None:
        table = PeerTable(8)
        table.get_or_create(addr(1), MAPPING, 10.0)
        self.assertEqual(table.next_deadline(), 10.0 + IDLE_TIMEOUT)
        self.assertEqual(table.expire(10.0 + IDLE_TIMEOUT - 0.001), 0)
        self.assertEqual(len(table), 1)
        self.assertEqual(table.expire(10.0 + IDLE_TIMEOUT), 1)
        self.assertEqual(len(table), 0)
        self.assertIsNone(table.next_deadline())
        self.assertEqual(table.stats()["expired"], 1)

    def test_only_reception_extends_validity(self) -> None:
        """RFC 4380 §5.4.1: an entry is valid while its last *reception* is under 30 s old."""
        table = PeerTable(8)
        table.trust(addr(1), MAPPING, 0.0)
        table.trust(addr(2), MAPPING, 0.0)
        table.touch_rx(table.get(addr(1)), 20.0)
        self.assertEqual(table.expire(30.0), 1)
        self.assertIsNone(table.get(addr(2)))
        self.assertEqual(table.next_deadline(), 50.0)
        self.assertEqual(table.expire(50.0), 1)

    def test_expiry_drops_queue_and_retry(self) -> None:
        table = PeerTable(8)
        peer = table.get_or_create(addr(1), MAPPING, 0.0)
        table.enqueue(peer, b"abc")
        table.try_bubble(peer, 0.0)
        table.expire(IDLE_TIMEOUT)
        self.assertEqual(table.stats()["queued_bytes"], 0)
        self.assertEqual(table.due_for_retry(IDLE_TIMEOUT), [])

    def test_expire_is_oldest_first_across_lists(self) -> None:
        table = PeerTable(8, idle_timeout=10.0)
        for n in range(6):
            if n % 2:
                table.trust(addr(n), MAPPING, float(n))
            else:
                table.get_or_create(addr(n), MAPPING, float(n))
        self.assertEqual(table.expire(13.0), 4)
        self.assertEqual([table.get(addr(n)) is not None for n in range(6)], [False] * 4 + [True] * 2)


class PacingTests(SynchronousTestCase):
    def test_two_seconds_apart(self) -> None:
        table = PeerTable(8)
        peer = table.get_or_create(addr(1), MAPPING, 0.0)
        self.assertTrue(table.try_bubble(peer, 0.0))
        self.assertFalse(table.try_bubble(peer, BUBBLE_INTERVAL - 0.01))
        self.assertTrue(table.try_bubble(peer, BUBBLE_INTERVAL))
        self.assertEqual(peer.bubble_at, BUBBLE_INTERVAL)

    def test_four_per_window_then_reset(self) -> None:
        table = PeerTable(8, idle_timeout=1000.0)
        peer = table.get_or_create(addr(1), MAPPING, 0.0)
        self.assertEqual(
            [table.try_bubble(peer, t) for t in (0.0, 2.0, 4.0, 6.0, 8.0, 100.0)], [True] * 4 + [False] * 2
        )
        # The window runs from the last bubble: none until 6 + 300.
        self.assertFalse(table.try_bubble(peer, 6.0 + BUBBLE_WINDOW - 0.01))
        self.assertTrue(table.try_bubble(peer, 6.0 + BUBBLE_WINDOW))
        self.assertEqual(peer.bubbles, 1)

    def test_expiry_does_not_renew_a_spent_budget(self) -> None:
        """RFC 4380 §5.2.6 MUST: 4 unanswered bubbles in 300 s, even across the 30 s expiry."""
        table = PeerTable(8)
        peer = table.get_or_create(addr(1), MAPPING, 0.0)
        for t in (0.0, 2.0, 4.0, 6.0):
            self.assertTrue(table.try_bubble(peer, t))
        table.give_up(peer)
        self.assertEqual(table.expire(IDLE_TIMEOUT + 1), 0)
        self.assertEqual(table.stats()["spent"], 1)
        again = table.get_or_create(addr(1), MAPPING, IDLE_TIMEOUT + 1)
        self.assertIs(again, peer)
        self.assertFalse(table.try_bubble(again, IDLE_TIMEOUT + 1))
        self.assertEqual(table.next_deadline(), 6.0 + BUBBLE_WINDOW)
        self.assertEqual(table.expire(6.0 + BUBBLE_WINDOW), 1)
        fresh = table.get_or_create(addr(1), MAPPING, 6.0 + BUBBLE_WINDOW)
        self.assertTrue(table.try_bubble(fresh, 6.0 + BUBBLE_WINDOW))

    def test_a_spent_peer_that_answers_is_trusted(self) -> None:
        table = PeerTable(8)
        peer = table.get_or_create(addr(1), MAPPING, 0.0)
        for t in (0.0, 2.0, 4.0, 6.0):
            table.try_bubble(peer, t)
        table.expire(IDLE_TIMEOUT)
        table.trust(addr(1), MAPPING, 40.0)
        self.assertEqual(table.stats()["spent"], 0)
        self.assertTrue(table.get(addr(1)).trusted)

    def test_spent_peers_are_evicted_first(self) -> None:
        table = PeerTable(2)
        spent = table.get_or_create(addr(1), MAPPING, 0.0)
        for t in (0.0, 2.0, 4.0, 6.0):
            table.try_bubble(spent, t)
        table.get_or_create(addr(2), MAPPING, 25.0)
        table.expire(IDLE_TIMEOUT)
        table.get_or_create(addr(3), MAPPING, 31.0)
        self.assertIsNone(table.get(addr(1)))
        self.assertIsNotNone(table.get(addr(2)))

    def test_trusted_peer_is_paced_but_not_retried(self) -> None:
        table = PeerTable(8)
        table.trust(addr(1), MAPPING, 0.0)
        peer = table.get(addr(1))
        self.assertTrue(table.try_bubble(peer, 0.0))
        self.assertFalse(table.try_bubble(peer, 1.0))
        self.assertEqual(peer.attempts, 0)
        self.assertEqual(table.due_for_retry(10.0), [])


class ReplyBubbleTests(SynchronousTestCase):
    def test_paced_per_mapping_and_renewed_by_an_answer(self) -> None:
        table = PeerTable(8)
        self.assertEqual([table.try_reply_bubble(MAPPING, t) for t in (0.0, 1.0, 2.0, 4.0, 6.0, 8.0)],
                         [True, False, True, True, True, False])
        self.assertTrue(table.try_reply_bubble(("198.18.0.101", 1), 8.0))  # another origin
        table.trust(addr(1), MAPPING, 9.0)  # a reception from it: the answer
        self.assertTrue(table.try_reply_bubble(MAPPING, 9.0))
        self.assertFalse(table.try_reply_bubble(MAPPING, 10.0))
        table.touch_rx(table.get(addr(1)), 20.0)
        self.assertTrue(table.try_reply_bubble(MAPPING, 10.5))

    def test_remembered_mappings_are_bounded(self) -> None:
        table = PeerTable(4)
        for port in range(100):
            table.try_reply_bubble(("198.18.0.100", port), 0.0)
        self.assertEqual(len(table._replies), 4)


class RetryTests(SynchronousTestCase):
    def test_packets_buy_rounds_two_seconds_apart_then_give_up(self) -> None:
        """What the relay does: bubble, retry at +2, and at +4 and +6 only for later packets."""
        table = PeerTable(8)
        peer = table.get_or_create(addr(1), MAPPING, 0.0)
        table.enqueue(peer, b"one")
        self.assertTrue(table.try_bubble(peer, 0.0))
        table.enqueue(peer, b"two")  # during the first round: no extra round
        sent, gave_up = [0.0], []
        now = 0.0
        while now < 20.0:
            deadline = table.next_deadline()
            assert deadline is not None
            now = deadline
            for due in table.due_for_retry(now):
                if not table.retry_wanted(due):
                    gave_up.append((now, table.give_up(due)))
                elif table.try_bubble(due, now):
                    sent.append(now)
                    if now in (2.0, 4.0):
                        table.enqueue(due, b"%d" % now)  # a packet in each later round: one more
            if gave_up:
                break
        self.assertEqual(sent, [0.0, 2.0, 4.0, 6.0])
        self.assertEqual(gave_up, [(8.0, [b"one", b"two", b"2", b"4"])])
        # The entry stays, its budget spent: no new round until it expires.
        self.assertEqual((peer.attempts, peer.queued), (0, 0))
        table.enqueue(peer, b"late")
        self.assertFalse(table.try_bubble(peer, 9.0))
        self.assertEqual(table.next_deadline(), IDLE_TIMEOUT)

    def test_one_packet_buys_two_rounds(self) -> None:
        table = PeerTable(8)
        peer = table.get_or_create(addr(1), MAPPING, 0.0)
        table.enqueue(peer, b"one")
        self.assertTrue(table.try_bubble(peer, 0.0))
        [due] = table.due_for_retry(2.0)
        self.assertTrue(table.retry_wanted(due))
        self.assertTrue(table.try_bubble(due, 2.0))
        [due] = table.due_for_retry(4.0)
        self.assertFalse(table.retry_wanted(due))
        self.assertEqual(table.give_up(due), [b"one"])
        self.assertEqual(peer.bubbles, 2)  # half the budget left for the next packet

    def test_not_due_before_two_seconds(self) -> None:
        table = PeerTable(8)
        early = table.get_or_create(addr(1), MAPPING, 0.0)
        late = table.get_or_create(addr(2), MAPPING, 0.0)
        table.try_bubble(early, 0.0)
        table.try_bubble(late, 1.0)
        self.assertEqual(table.next_deadline(), 2.0)
        self.assertEqual(table.due_for_retry(1.99), [])
        self.assertEqual(table.due_for_retry(2.0), [early])
        self.assertEqual(table.due_for_retry(2.5), [])
        self.assertEqual(table.due_for_retry(3.0), [late])

    def test_new_bubble_reschedules(self) -> None:
        table = PeerTable(8)
        a, b = (table.get_or_create(addr(n), MAPPING, 0.0) for n in (1, 2))
        table.try_bubble(a, 0.0)
        table.try_bubble(b, 1.0)
        table.try_bubble(a, 2.5)  # a packet arrived for `a`: bubble now, next retry at 4.5
        self.assertEqual(table.due_for_retry(3.0), [b])
        self.assertEqual(table.due_for_retry(4.5), [a])
        self.assertEqual(a.attempts, 2)


class EvictionTests(SynchronousTestCase):
    def test_len_never_exceeds_max(self) -> None:
        table = PeerTable(4)
        for n in range(20):
            table.get_or_create(addr(n), MAPPING, float(n))
            self.assertLessEqual(len(table), 4)
        self.assertEqual([table.get(addr(n)) is not None for n in range(16, 20)], [True] * 4)
        self.assertEqual(table.stats()["evicted"], 16)

    def test_evicts_least_recently_heard_untrusted_first(self) -> None:
        table = PeerTable(3)
        table.trust(addr(0), MAPPING, 0.0)
        table.get_or_create(addr(1), MAPPING, 1.0)
        table.get_or_create(addr(2), MAPPING, 2.0)
        table.touch_rx(table.get(addr(1)), 3.0)
        table.get_or_create(addr(3), MAPPING, 4.0)  # evicts 2: oldest untrusted
        self.assertIsNone(table.get(addr(2)))
        table.get_or_create(addr(4), MAPPING, 5.0)  # evicts 1
        table.get_or_create(addr(5), MAPPING, 6.0)  # evicts 3; trusted 0 survives
        self.assertIsNotNone(table.get(addr(0)))
        self.assertEqual(len(table), 3)

    def test_evicts_oldest_trusted_when_all_trusted(self) -> None:
        table = PeerTable(2)
        table.trust(addr(0), MAPPING, 0.0)
        table.trust(addr(1), MAPPING, 1.0)
        table.touch_rx(table.get(addr(0)), 2.0)
        self.assertEqual(table.trust(addr(2), MAPPING, 3.0), [])
        self.assertIsNone(table.get(addr(1)))
        self.assertEqual(len(table), 2)

    def test_eviction_releases_queue_and_retry(self) -> None:
        table = PeerTable(1)
        peer = table.get_or_create(addr(0), MAPPING, 0.0)
        table.enqueue(peer, b"abcd")
        table.try_bubble(peer, 0.0)
        table.get_or_create(addr(1), MAPPING, 1.0)
        self.assertEqual(table.stats()["queued_bytes"], 0)
        self.assertEqual(table.due_for_retry(5.0), [])

    def test_rejects_empty_table(self) -> None:
        self.assertRaises(ValueError, PeerTable, 0)


class AddressesPerMappingTests(SynchronousTestCase):
    def test_forged_sources_from_one_mapping_hold_a_few_entries(self) -> None:
        """A forger on one IPv4:port cannot fill a relay's table with trusted entries."""
        table = PeerTable(64, addresses_per_mapping=ADDRESSES_PER_MAPPING)
        table.trust(addr(100), ("198.18.0.200", 4000), 0.0)  # a real peer elsewhere
        for n in range(50):
            table.trust(addr(n), MAPPING, 1.0 + n)
        self.assertEqual(len(table), 1 + ADDRESSES_PER_MAPPING)
        self.assertEqual([n for n in range(50) if table.get(addr(n))], list(range(50 - ADDRESSES_PER_MAPPING, 50)))
        self.assertTrue(table.get(addr(100)).trusted)
        self.assertEqual(table.stats()["superseded"], 50 - ADDRESSES_PER_MAPPING)
        self.assertEqual(table.evicted, 0)

    def test_a_restarted_client_keeps_both_addresses_trusted(self) -> None:
        """A client restarted on a fixed port has a new address at the same mapping."""
        table = PeerTable(8, addresses_per_mapping=ADDRESSES_PER_MAPPING)
        for t in range(6):
            table.trust(addr(t % 2), MAPPING, float(t))
        self.assertTrue(table.get(addr(0)).trusted and table.get(addr(1)).trusted)
        self.assertEqual(table.stats()["superseded"], 0)

    def test_the_least_recently_heard_address_gives_way(self) -> None:
        table = PeerTable(8, addresses_per_mapping=2)
        table.trust(addr(1), MAPPING, 0.0)
        table.trust(addr(2), MAPPING, 1.0)
        table.touch_rx(table.get(addr(1)), 2.0)
        table.trust(addr(3), MAPPING, 3.0)
        self.assertEqual([table.get(addr(n)) is not None for n in (1, 2, 3)], [True, False, True])

    def test_a_peer_that_moves_frees_its_old_mapping(self) -> None:
        table = PeerTable(8, addresses_per_mapping=1)
        table.trust(addr(1), MAPPING, 0.0)
        table.trust(addr(1), ("198.18.0.100", 4001), 1.0)
        table.trust(addr(2), MAPPING, 2.0)  # the old mapping is free: nobody is superseded
        self.assertEqual(len(table), 2)
        self.assertEqual(table.stats()["superseded"], 0)

    def test_expired_holder_frees_the_mapping(self) -> None:
        table = PeerTable(8, addresses_per_mapping=1)
        table.trust(addr(1), MAPPING, 0.0)
        table.expire(IDLE_TIMEOUT)
        table.trust(addr(2), MAPPING, IDLE_TIMEOUT)
        self.assertEqual(table.stats()["superseded"], 0)
        self.assertEqual(table._by_mapping, {MAPPING: [addr(2)]})

    def test_a_client_table_shares_a_mapping_between_peers(self) -> None:
        """Native IPv6 hosts all sit behind one relay mapping in a client's table."""
        table = PeerTable(8)
        for n in range(5):
            table.trust(addr(n), MAPPING, 0.0)
        self.assertEqual(len(table), 5)


class ReportTests(SynchronousTestCase):
    def test_snapshot_format_and_order(self) -> None:
        table = PeerTable(8)
        peer = table.get_or_create(bytes.fromhex("20010000c61200011c6b320339edff9b"), None, 1.0)
        table.enqueue(peer, bytes(60))
        table.trust(addr(1), MAPPING, 2.0)
        table.get_or_create(addr(2), ("198.18.0.101", 4000), 3.0)
        snapshot = table.snapshot(4.5)
        self.assertEqual(
            snapshot[0],
            {
                "address": "2001:0:c612:1::2",
                "mapping": "198.18.0.101:4000",
                "trusted": False,
                "idle": 1.5,
                "queued_bytes": 0,
            },
        )
        self.assertEqual(snapshot[1]["address"], "2001:0:c612:1::1")
        self.assertEqual(snapshot[1]["mapping"], "198.18.0.100:52732")
        self.assertTrue(snapshot[1]["trusted"])
        self.assertEqual(
            snapshot[2],
            {
                "address": "2001:0:c612:1:1c6b:3203:39ed:ff9b",
                "mapping": None,
                "trusted": False,
                "idle": 3.5,
                "queued_bytes": 60,
            },
        )
        self.assertEqual(len(table.snapshot(4.5, limit=2)), 2)

    def test_snapshot_lists_every_peer_unless_limited(self) -> None:
        table = PeerTable(500)
        for n in range(150):
            table.trust(addr(n), ("198.18.0.100", 1000 + n), float(n))
        self.assertEqual(len(table.snapshot(200.0)), 150)  # no hidden cap: the operator asked for all
        self.assertEqual([p["idle"] for p in table.snapshot(200.0, limit=3)], [51.0, 52.0, 53.0])

    def test_stats(self) -> None:
        table = PeerTable(8)
        table.enqueue(table.get_or_create(addr(0), MAPPING, 0.0), b"12345")
        table.trust(addr(1), MAPPING, 0.0)
        self.assertEqual(table.stats(), {"count": 2, "trusted": 1, "spent": 0, "queued_bytes": 5, "evicted": 0,
                                         "expired": 0, "superseded": 0})


# Random operation sequences: (operation, peer number, size or time step).
operations = st.lists(
    st.tuples(
        st.sampled_from(["create", "enqueue", "trust", "bubble", "rx", "retry", "expire"]),
        st.integers(0, 11),
        st.integers(0, 700),
    ),
    max_size=120,
)


class InvariantTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(operations, st.integers(1, 6), st.sampled_from([None, 1, 2]))
    def test_random_operations_keep_invariants(self, ops: list[tuple[str, int, int]], max_peers: int,
                                               per_mapping: int | None) -> None:
        table = PeerTable(max_peers, queue_bytes=1000, idle_timeout=10.0, total_queue_bytes=2500,
                          addresses_per_mapping=per_mapping)
        model: dict[bytes, list[bytes]] = {}  # what each present peer should have queued
        now = 0.0
        for op, n, arg in ops:
            now += (arg % 7) * 0.5
            key = addr(n)
            peer = table.get(key)
            if op == "create":
                table.get_or_create(key, MAPPING, now)
            elif op == "enqueue" and peer is not None:
                packet = bytes([n]) * arg
                fits = peer.queued + arg <= 1000
                fits = fits and table.stats()["queued_bytes"] + arg <= 2500
                self.assertEqual(table.enqueue(peer, packet), fits)
                if fits:
                    model.setdefault(key, []).append(packet)
            elif op == "trust":
                mapping = ("198.18.0.100", 4000 + arg % 3)  # a few mappings, so some are shared
                self.assertEqual(table.trust(key, mapping, now), model.pop(key, []))
            elif op == "bubble" and peer is not None:
                table.try_bubble(peer, now)
            elif op == "rx" and peer is not None:
                table.touch_rx(peer, now)
            elif op == "retry":
                for due in table.due_for_retry(now):
                    self.assertFalse(due.trusted)
                    if not table.retry_wanted(due):
                        self.assertEqual(table.give_up(due), model.pop(due.addr, []))
                    else:
                        self.assertTrue(table.try_bubble(due, now))
            elif op == "expire":
                table.expire(now)
                for entry in table.snapshot(now, limit=max_peers):
                    if entry["idle"] >= 10.0:  # only a spent entry outlives its idle time
                        kept = table.get(ip_address(entry["address"]).packed)
                        self.assertFalse(kept.trusted)
                        self.assertGreaterEqual(kept.bubbles, BUBBLE_LIMIT)
                        self.assertLess(now, kept.bubble_at + BUBBLE_WINDOW)
            model = {k: v for k, v in model.items() if table.get(k) is not None}
            self.assertLessEqual(len(table), max_peers)
            stats = table.stats()
            self.assertEqual(stats["queued_bytes"], sum(len(p) for q in model.values() for p in q))
            self.assertLessEqual(stats["queued_bytes"], 2500)
            snapshot = table.snapshot(now, limit=max_peers)
            self.assertEqual(len(snapshot), len(table))
            self.assertEqual(sum(e["trusted"] for e in snapshot), stats["trusted"])
            self.assertEqual(table.next_deadline() is None, len(table) == 0)
            if per_mapping:  # a few trusted addresses per mapping, and the index names exactly those
                trusted = [table.get(ip_address(e["address"]).packed) for e in snapshot if e["trusted"]]
                index: dict[tuple[str, int], set[bytes]] = {}
                for peer in trusted:
                    index.setdefault(peer.mapping, set()).add(peer.addr)
                self.assertLessEqual(max(map(len, index.values()), default=0), per_mapping)
                self.assertEqual({m: set(a) for m, a in table._by_mapping.items()}, index)


class ResizeTests(SynchronousTestCase):
    def test_a_smaller_bound_evicts_untrusted_before_trusted(self) -> None:
        table = PeerTable(8)
        for n in range(4):
            table.trust(addr(n), MAPPING, float(n))
        for n in range(4, 8):
            table.get_or_create(addr(n), MAPPING, float(n))
        table.resize(5)
        self.assertEqual((len(table), table.evicted, table.max_peers), (5, 3, 5))
        self.assertEqual([n for n in range(8) if table.get(addr(n)) is not None], [0, 1, 2, 3, 7])
        table.resize(20)
        self.assertEqual(len(table), 5)
        self.assertRaises(ValueError, table.resize, 0)
