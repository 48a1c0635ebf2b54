"""roles/nat_behaviour.py: RFC 6081 port-preserving and sequential port-symmetric detection."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.roles.nat_behaviour import SEQUENTIAL_MAX_STEP, UNKNOWN, classify


class ClassifyTests(SynchronousTestCase):
    def test_port_preserving_symmetric_nat(self) -> None:
        """The first mapping keeps the local port; the second cannot, being taken."""
        found = classify(3544, 3544, 61001)
        self.assertEqual((found.port_preserving, found.sequential), (True, False))

    def test_sequential_port_symmetric_nat(self) -> None:
        found = classify(3544, 40000, 40002)
        self.assertEqual((found.port_preserving, found.sequential, found.step), (False, True, 2))

    def test_sequential_across_the_top_of_the_port_range(self) -> None:
        self.assertEqual(classify(3544, 65535, 1).step, 2)

    def test_random_port_symmetric_nat(self) -> None:
        found = classify(3544, 40000, 12345)
        self.assertEqual((found.port_preserving, found.sequential, found.step), (False, False, None))

    def test_same_mapping_twice_is_not_sequential(self) -> None:
        self.assertFalse(classify(3544, 40000, 40000).sequential)

    def test_a_step_down_is_not_sequential(self) -> None:
        self.assertFalse(classify(3544, 40002, 40000).sequential)

    def test_unknown_local_port(self) -> None:
        self.assertIsNone(classify(None, 3544, 3545).port_preserving)
        self.assertEqual(UNKNOWN.report(), {"port_preserving": None, "sequential": None, "sequential_step": None})

    @given(st.integers(1, 65535), st.integers(1, 65535), st.integers(1, 65535))
    def test_sequential_means_a_small_step_up(self, local: int, first: int, second: int) -> None:
        found = classify(local, first, second)
        self.assertEqual(found.sequential, 0 < (second - first) % 65536 <= SEQUENTIAL_MAX_STEP)
        self.assertEqual(found.port_preserving, first == local)
