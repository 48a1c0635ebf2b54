"""Whether a relay's native IPv6 side can reach what it serves: judged from the routing table.

A relay forwards its Teredo peers' packets to native IPv6 (RFC 4380 §5.4). If its uplink
is down, the kernel has no route toward the served prefixes but the relay's own route to
the Teredo prefix through its TUN (which overlaps 2000::/3 and must not count): the
relay still draws packets by announcing that route, and loses them. Such a relay is
unhealthy and withdraws until a route is back.

Pure: fed the route list (netlink.Link.ipv6_routes reads it), so it is tested without root.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv6Network

LINK_LOCAL = IPv6Network("fe80::/10")  # RFC 4291 §2.5.6: never a path beyond the link
MULTICAST = IPv6Network("ff00::/8")  # RFC 4291 §2.7


@dataclass(frozen=True)
class Route:
    """One IPv6 route of the kernel's main table."""

    destination: IPv6Network
    oif: int | None  # output device; None for a multipath route (its hops are elsewhere)
    unicast: bool = True  # False: unreachable, blackhole, prohibit, which lead nowhere


def leads_toward(route: Route, prefix: IPv6Network, tun_index: int | None) -> bool:
    """Whether `route` can carry packets toward part of `prefix` other than through our TUN."""
    destination = route.destination
    return (route.unicast and route.oif != tun_index and destination.overlaps(prefix)
            and not destination.subnet_of(LINK_LOCAL) and not destination.subnet_of(MULTICAST))


def native_problem(routes: Iterable[Route], served: Iterable[IPv6Network], tun_index: int | None,
                   tun_name: str) -> str | None:
    """A health sentence if no route leads toward any served prefix except through the TUN
    `tun_index` (`tun_name` in the sentence), else None."""
    served = tuple(served)
    routes = tuple(routes)
    if any(leads_toward(route, prefix, tun_index) for route in routes for prefix in served):
        return None
    toward = ", ".join(str(prefix) for prefix in served)
    return f"no IPv6 route toward {toward} except through {tun_name}"
