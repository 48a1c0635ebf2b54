"""KeyedRateLimit: burst, steady rate, bounded memory, active keys kept across generations."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.ratelimit import ICMP_ERRORS_PER_SECOND, IcmpErrorBudget, KeyedRateLimit
from teredo_appliance.stats import Counters
from teredo_appliance.wire.ipv6 import build_icmpv6, build_packet, parse_header


def allowed(limit: KeyedRateLimit, key: object, count: int, now: float) -> int:
    return sum(limit.allow(key, now) for _ in range(count))


class KeyedRateLimitTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        limit = KeyedRateLimit(rate=10, burst=5, capacity=100)
        self.assertEqual(allowed(limit, "a", 20, 0.0), 5)
        self.assertEqual(allowed(limit, "a", 20, 0.05), 0)  # half an interval earns nothing
        self.assertEqual(allowed(limit, "a", 20, 0.1), 1)
        self.assertEqual(allowed(limit, "a", 20, 0.3), 2)
        self.assertEqual(allowed(limit, "a", 20, 10.0), 5)  # a long silence earns one burst, no more

    def test_steady_sender_at_the_rate_is_never_refused(self) -> None:
        limit = KeyedRateLimit(rate=20, burst=1, capacity=100)
        self.assertEqual(sum(limit.allow("a", i / 20) for i in range(10000)), 10000)

    def test_memory_is_bounded(self) -> None:
        limit = KeyedRateLimit(rate=1, burst=1, capacity=1000)
        for key in range(100000):
            limit.allow(key, 0.0)
            self.assertLessEqual(len(limit), 1000)

    def test_an_active_key_survives_a_flood_of_new_ones(self) -> None:
        limit = KeyedRateLimit(rate=1, burst=2, capacity=100)
        self.assertEqual(allowed(limit, "flooder", 10, 0.0), 2)
        for key in range(10000):
            limit.allow(key, 0.0)
            if key % 40 == 0:  # the flooder keeps sending between the others
                self.assertFalse(limit.allow("flooder", 0.0))

    def test_a_forgotten_key_starts_with_a_full_bucket(self) -> None:
        limit = KeyedRateLimit(rate=1, burst=2, capacity=4)
        self.assertEqual(allowed(limit, "quiet", 5, 0.0), 2)
        for key in range(4):  # two generations of other keys
            limit.allow(key, 0.0)
        self.assertEqual(allowed(limit, "quiet", 5, 0.0), 2)

    def test_bad_parameters(self) -> None:
        for rate, burst, capacity in ((0, 1, 10), (-1, 1, 10), (1, 0, 10), (1, 1, 1)):
            self.assertRaises(ValueError, KeyedRateLimit, rate, burst, capacity)

    @settings(max_examples=200, deadline=None)
    @given(st.floats(0.1, 1000), st.integers(1, 100), st.lists(st.floats(0, 100), min_size=1, max_size=300))
    def test_never_more_than_burst_plus_rate_times_elapsed(self, rate: float, burst: int, times: list[float]) -> None:
        limit = KeyedRateLimit(rate, burst, capacity=10)
        times.sort()
        passed = sum(limit.allow("k", now) for now in times)
        self.assertLessEqual(passed, burst + rate * (times[-1] - times[0]) + 1e-6)


class IcmpErrorBudgetTests(SynchronousTestCase):
    SOURCE = bytes.fromhex("20010db8000000000000000000000001")
    DESTINATION = bytes.fromhex("20010db8000000000000000000000002")

    def test_rfc_4443_rules_and_one_budget_a_second(self) -> None:
        counters = Counters()
        budget = IcmpErrorBudget(counters)
        packet = build_packet(self.SOURCE, self.DESTINATION, 59, b"")
        error = build_icmpv6(self.SOURCE, self.DESTINATION, 1, 0, bytes(4))  # an ICMPv6 error itself
        multicast = build_packet(self.SOURCE, bytes.fromhex("ff02" + "00" * 13 + "01"), 59, b"")
        self.assertFalse(budget.allow(error, parse_header(error), 0.0))
        self.assertFalse(budget.allow(multicast, parse_header(multicast), 0.0))
        allowed = [budget.allow(packet, parse_header(packet), 0.5) for _ in range(ICMP_ERRORS_PER_SECOND + 3)]
        self.assertEqual(allowed.count(True), ICMP_ERRORS_PER_SECOND)
        self.assertEqual((counters["icmp.sent"], counters["icmp.rate-limited"]), (ICMP_ERRORS_PER_SECOND, 3))
        self.assertTrue(budget.allow(packet, parse_header(packet), 1.5))
