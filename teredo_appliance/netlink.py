"""Configure one network device through netlink (pyroute2): IPv6 on, MTU, up, addresses, routes.

Every failure becomes a `LinkError` whose message names the device and the operation, e.g.
"teredo: cannot add route 2001::/32: File exists", so an operator reads the cause in one line.

Each call opens its own short-lived netlink socket: configuration is rare, and nothing stays
open between calls. pyroute2's synchronous API runs a private asyncio loop, so these calls must
not be made from inside a running asyncio loop (fine with Twisted's default epoll reactor).
All operations need CAP_NET_ADMIN in the device's network namespace.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface, IPv6Network
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from teredo_appliance.native_health import Route

# include/uapi/linux/if_link.h: enum in6_addr_gen_mode.
IN6_ADDR_GEN_MODE_NONE = 1
IFF_UP = 0x1  # include/uapi/linux/if.h
RT_TABLE_MAIN = 254  # include/uapi/linux/rtnetlink.h
RTN_UNICAST = 1  # include/uapi/linux/rtnetlink.h: a route that leads somewhere
KERNEL_DROP_COUNTERS = ("tx_dropped", "rx_dropped")  # struct rtnl_link_stats64 fields we report


class LinkError(Exception):
    """A network device could not be created or configured; the message says which and why."""


@dataclass(frozen=True)
class LinkState:
    """A device as the kernel has it: what a role compares with what it set up."""

    index: int
    up: bool
    addresses: frozenset[IPv6Interface]
    routes: frozenset[IPv6Network]  # IPv6 routes through the device, main table


class Link:
    """Netlink configuration of the device named `ifname` in the current network namespace."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname

    def prepare(self) -> None:
        """Make the (still down) device an IPv6 link whose addresses only we choose.

        - addr_gen_mode none: a TUN is ARPHRD_NONE, for which the kernel would otherwise add a
          random fe80:: address on up. The role's own link-local (the relay's
          fe80::ffff:ffff:ffff, which the client uses too, as Miredo's does) must be the only one, or
          the kernel may pick the random one as source for what it sends through the tunnel.
        - disable_ipv6=0: a host or namespace with IPv6 disabled by default would refuse
          our addresses.
        - accept_ra=0: the kernel must neither solicit routers through the tunnel (its RS
          would reach the role as a stray multicast packet) nor autoconfigure from RAs that
          arrive through it; the roles own addresses and routes.
        """
        spec = {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE)]})]}
        with self._netlink("disable address autoconfiguration") as (ipr, index):
            ipr.link("set", index=index, IFLA_AF_SPEC=spec)
        self._sysctl("disable_ipv6", "0", "enable IPv6")
        self._sysctl("accept_ra", "0", "disable router advertisements")

    def up(self, mtu: int) -> None:
        """Set the MTU and bring the device up, in one request."""
        with self._netlink(f"set MTU {mtu} and bring the link up") as (ipr, index):
            ipr.link("set", index=index, mtu=mtu, state="up")

    def inspect(self) -> LinkState | None:
        """The device now, or None if there is none of this name (deleted from outside)."""
        try:
            with IPRoute() as ipr:
                indices = ipr.link_lookup(ifname=self.ifname)
                if not indices:
                    return None
                index = indices[0]
                flags = ipr.get_links(index)[0]["flags"]
                addresses = frozenset(
                    IPv6Interface((a.get_attr("IFA_ADDRESS"), a["prefixlen"]))
                    for a in ipr.get_addr(family=socket.AF_INET6, index=index)
                )
                routes = frozenset(
                    IPv6Network((r.get_attr("RTA_DST") or "::", r["dst_len"]))
                    for r in ipr.get_routes(family=socket.AF_INET6, oif=index, table=RT_TABLE_MAIN)
                )
        except NetlinkError as e:
            raise LinkError(f"{self.ifname}: cannot inspect the device: {_strerror(e.code)}") from e
        except OSError as e:
            raise LinkError(f"{self.ifname}: cannot inspect the device: {_strerror(e.errno)}") from e
        return LinkState(index, bool(flags & IFF_UP), addresses, routes)

    def ipv6_routes(self) -> list[Route]:
        """Every IPv6 route of the main table, through any device: what the relay's health
        compares with its served prefixes (native_health)."""
        with self._netlink("read the IPv6 routing table") as (ipr, _index):
            return [
                Route(IPv6Network((r.get_attr("RTA_DST") or "::", r["dst_len"])), r.get_attr("RTA_OIF"),
                      r["type"] == RTN_UNICAST)
                for r in ipr.get_routes(family=socket.AF_INET6, table=RT_TABLE_MAIN)
            ]

    def drop_counts(self) -> dict[str, int]:
        """The kernel's drop counters of the device (as `ip -s link` shows them).

        On a TUN, tx_dropped counts packets the kernel routed to the device but could not
        queue for us (our reader fell behind); rx_dropped, packets we wrote that it refused.
        """
        with self._netlink("read statistics") as (ipr, index):
            stats = ipr.get_links(index)[0].get_attr("IFLA_STATS64")
        if stats is None:
            raise LinkError(f"{self.ifname}: cannot read statistics: none reported")
        return {key: int(stats[key]) for key in KERNEL_DROP_COUNTERS}

    def add_address(self, address: IPv4Interface | IPv6Interface) -> None:
        self._address("add", "add address", address)

    def remove_address(self, address: IPv4Interface | IPv6Interface) -> None:
        self._address("del", "remove address", address)

    def add_route(self, prefix: IPv6Network, metric: int | None = None, protocol: int | None = None) -> None:
        """Route `prefix` to the device; `protocol` (rtm_protocol, None: static) tells a routing
        daemon who owns it, `metric` (None: the kernel's 1024) its preference."""
        self._route("add", "add route", prefix, metric, protocol)

    def remove_route(self, prefix: IPv6Network, metric: int | None = None, protocol: int | None = None) -> None:
        self._route("del", "remove route", prefix, metric, protocol)

    def _address(self, command: str, verb: str, address: IPv4Interface | IPv6Interface) -> None:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        with self._netlink(f"{verb} {address}") as (ipr, index):
            ipr.addr(command, index=index, address=str(address.ip), prefixlen=address.network.prefixlen, family=family)

    def _route(self, command: str, verb: str, prefix: IPv6Network, metric: int | None,
               protocol: int | None) -> None:
        extra: dict[str, Any] = {} if metric is None else {"priority": metric}
        if protocol is not None:
            extra["proto"] = protocol
        what = f"{verb} {prefix}" + ("" if metric is None else f" metric {metric}")
        what += "" if protocol is None else f" proto {protocol}"
        with self._netlink(what) as (ipr, index):
            ipr.route(command, dst=str(prefix), oif=index, family=socket.AF_INET6, **extra)

    @contextmanager
    def _netlink(self, operation: str) -> Iterator[tuple[Any, int]]:
        """Yield (IPRoute, ifindex); turn any failure into a LinkError naming `operation`."""
        try:
            with IPRoute() as ipr:
                indices = ipr.link_lookup(ifname=self.ifname)
                if not indices:
                    raise LinkError(f"{self.ifname}: cannot {operation}: no such device")
                yield ipr, indices[0]
        except NetlinkError as e:
            raise LinkError(f"{self.ifname}: cannot {operation}: {_strerror(e.code)}") from e
        except OSError as e:
            raise LinkError(f"{self.ifname}: cannot {operation}: {_strerror(e.errno)}") from e

    def _sysctl(self, key: str, value: str, operation: str) -> None:
        path = f"/proc/sys/net/ipv6/conf/{self.ifname}/{key}"
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as e:
            raise LinkError(f"{self.ifname}: cannot {operation} ({path}): {_strerror(e.errno)}") from e


def _strerror(code: int | None) -> str:
    return os.strerror(code) if code else "unknown error"
