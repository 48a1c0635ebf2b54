"""The relay's native-side health, judged from a route list (no root needed)."""

from __future__ import annotations

from ipaddress import IPv6Network

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from teredo_appliance.native_health import Route, native_problem

SERVED = (IPv6Network("2000::/3"),)
TUN = 7
PROBLEM = "no IPv6 route toward 2000::/3 except through teredo-relay"


def judge(*routes: Route, served: tuple[IPv6Network, ...] = SERVED) -> str | None:
    return native_problem(routes, served, TUN, "teredo-relay")


class NativeProblemTests(unittest.SynchronousTestCase):
    def test_an_uplink_prefix_inside_the_served_one_is_healthy(self) -> None:
        self.assertIsNone(judge(Route(IPv6Network("2001:db8:1::/64"), 2)))

    def test_a_default_route_is_healthy(self) -> None:
        self.assertIsNone(judge(Route(IPv6Network("::/0"), 2)))

    def test_only_the_relays_own_route_is_broken(self) -> None:
        self.assertEqual(judge(Route(IPv6Network("2001::/32"), TUN), Route(IPv6Network("::/0"), TUN)), PROBLEM)

    def test_link_local_multicast_and_unreachable_routes_do_not_count(self) -> None:
        self.assertEqual(judge(Route(IPv6Network("fe80::/64"), 2), Route(IPv6Network("ff00::/8"), 2),
                               Route(IPv6Network("::/0"), 2, unicast=False)), PROBLEM)

    def test_a_route_outside_the_served_prefixes_does_not_count(self) -> None:
        self.assertEqual(judge(Route(IPv6Network("fd00::/8"), 2)), PROBLEM)

    def test_a_multipath_route_counts(self) -> None:
        self.assertIsNone(judge(Route(IPv6Network("::/0"), None)))

    def test_one_served_prefix_with_a_route_is_enough_and_the_sentence_names_them_all(self) -> None:
        served = (IPv6Network("2001:db8:a::/48"), IPv6Network("2001:db8:b::/48"))
        self.assertIsNone(judge(Route(IPv6Network("2001:db8:b:1::/64"), 2), served=served))
        self.assertEqual(judge(served=served),
                         "no IPv6 route toward 2001:db8:a::/48, 2001:db8:b::/48 except through teredo-relay")

    @given(st.lists(st.builds(Route, st.builds(IPv6Network, st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)),
                                               strict=st.just(False)),
                              st.one_of(st.none(), st.integers(1, 10)), st.booleans())))
    def test_healthy_exactly_when_a_unicast_route_off_the_tun_overlaps_the_served(self, routes: list[Route]) -> None:
        expected = any(r.unicast and r.oif != TUN and r.destination.overlaps(SERVED[0]) for r in routes)
        self.assertEqual(judge(*routes) is None, expected)  # 2000::/3 shares nothing with fe80::/10, ff00::/8
