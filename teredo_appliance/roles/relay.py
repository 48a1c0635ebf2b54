"""The relay role as a Twisted service: a TUN device and a UDP port around RelayMachine.

All forwarding decisions live in `relay_machine`; this module owns the TUN device (the
route to the Teredo prefix points at it), the UDP socket and the one timer, and feeds
the machine the reactor's clock (the I/O itself is the shared TunneledRole).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from teredo_appliance.config_model import RelayConfig
from teredo_appliance.native_health import native_problem
from teredo_appliance.netlink import Link, LinkError
from teredo_appliance.netwatch import NetWatch, either, ipv6_route_change
from teredo_appliance.roles.anycast import Announcer
from teredo_appliance.roles.relay_machine import RELAY_LINK_LOCAL, RelayMachine
from teredo_appliance.roles.tunneled import TunneledRole, kernel_source
from teredo_appliance.wire.ipv6 import is_link_local

# The TUN's only address (RFC 4380 §5.4, as Miredo): link-local, so the kernel never
# sources packets for the Internet from it.
RELAY_INTERFACE_ADDRESS = IPv6Interface((RELAY_LINK_LOCAL, 64))
# Route changes are watched over netlink; this slow re-read covers a notification missed.
NATIVE_RECHECK = 10.0  # seconds


def kernel_error_source(destination: bytes) -> bytes:
    """The source of an ICMPv6 error to `destination`: the address the kernel would use.

    RFC 4443 §2.2 (b): a node reporting a forwarding failure uses the unicast address
    "most helpful in diagnosing the error". The TUN's link-local is not: a router never
    forwards a packet with a link-local source (RFC 4291 §2.5.6), so an error from
    fe80::ffff:ffff:ffff would die in this host's kernel instead of reaching a sender
    elsewhere. The host's global address towards the sender reaches it; a sender on this
    host itself (or one the kernel has no global route to) gets the link-local, which
    works locally. Errors are rate-limited, so one routing lookup each costs nothing.
    """
    source = kernel_source(socket.AF_INET6, socket.inet_ntop(socket.AF_INET6, destination))
    if source is None:
        return RELAY_LINK_LOCAL
    chosen = socket.inet_pton(socket.AF_INET6, source)
    if chosen == destination or is_link_local(chosen):
        return RELAY_LINK_LOCAL
    return chosen


class RelayService(TunneledRole):
    """A Teredo relay (RFC 4380 §5.4): native IPv6 on `interface`, Teredo on UDP `bind_port`.

    `tun_system` (twisted.pair.testing.MemoryIOSystem), `link_factory` and `link_watch`
    (the TUN's netlink watch) let the tests run without root; `error_source` picks ICMPv6
    error sources (kernel_error_source).
    """

    role = "relay"

    def __init__(
        self,
        config: RelayConfig,
        reactor: Any = None,
        *,
        tun_system: Any = None,
        link_factory: Callable[[str], Link] = Link,
        link_watch: Callable[..., Any] = NetWatch,
        error_source: Callable[[bytes], bytes] = kernel_error_source,
    ) -> None:
        self._native: str | None = None  # why the native side is broken (native_health), or None
        super().__init__(config, reactor, tun_system=tun_system, link_factory=link_factory, link_watch=link_watch)
        self._native_recheck = LoopingCall(self._recheck_native)
        self._native_recheck.clock = self.reactor
        self.machine = RelayMachine(
            config.prefix,
            config.mtu,
            config.max_peers,
            self.udp.send,
            self.tunnel.write,
            self.counters,
            error_source=error_source,
            bubbles_per_second=config.bubbles_per_second,
            served_prefixes=config.served_prefixes,
            send_all=self.udp.send_all,
        )
        # The route to the Teredo prefix is what a routing daemon announces (twistd-teredo(8),
        # "Scaling out"): its protocol number and metric let the daemon match on its origin.
        # An anycast relay's shared IPv4 address goes and comes with it.
        what = f"route {config.prefix} proto {config.route_protocol} metric {config.route_metric}"
        if config.anycast:
            what += f" and anycast {config.bind_address}/32 on {config.interface}"
        self.announcer = Announcer(
            what, add=self._announce, remove=self._withdraw,
            installed=lambda: self.tunnel.has_route(config.prefix), clock=self.reactor,
        )

    def reconfigure(self, config: RelayConfig) -> None:
        """max_peers applies in place: the table keeps its peers, or its most useful ones."""
        self.machine.peers.resize(config.max_peers)
        super().reconfigure(config)

    def _link_addresses(self, announced: bool) -> list[IPv4Interface | IPv6Interface]:
        """The TUN's addresses: its link-local, and the shared anycast address while announced.

        On the TUN rather than lo, the anycast address dies with the process: a relay killed
        outright stops drawing its clients' packets as soon as the kernel deletes the device."""
        anycast = [IPv4Interface((self.config.bind_address, 32))] if announced and self.config.anycast else []
        return [RELAY_INTERFACE_ADDRESS, *anycast]

    def _announce(self) -> None:
        config = self.config
        self.tunnel.set_addresses(self._link_addresses(True))
        self.tunnel.add_route(config.prefix, config.route_metric, config.route_protocol)

    def _withdraw(self) -> None:
        config = self.config
        try:
            self.tunnel.remove_route(config.prefix, config.route_metric, config.route_protocol)
        finally:
            self.tunnel.set_addresses(self._link_addresses(False))

    def _on_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        wake = self.machine.from_udp(data, address, self._seconds())
        if wake is not None:
            self._wake(wake)

    def _on_datagrams(self, batch: list[tuple[bytes, tuple[str, int]]]) -> None:
        try:
            wake = self.machine.from_udp_batch(batch, self._seconds())
        except Exception:  # a bug, not traffic: the rest of this read is lost, counted once
            self.udp.guarded().failed()
            return
        if wake is not None:
            self._wake(wake)

    def _on_packet(self, packet: bytes) -> None:
        wake = self.machine.from_tun(packet, self._seconds())
        if wake is not None:
            self._wake(wake)

    def _on_segments(self, packets: list[bytes]) -> None:
        wake = self.machine.from_tun_segments(packets, self._seconds())
        if wake is not None:
            self._wake(wake)

    def _on_timer_due(self, now: float) -> None:
        wake = self.machine.on_timer(now)
        if wake is not None:
            self._wake(wake)

    def _configure_link(self) -> None:
        self._update_native()  # a relay started without an uplink does not announce at all
        self.announcer.state.problem = self._native
        if self.announcer.state.wanted:  # a restart after a drain (a reload) stays drained
            self._announce()
        else:
            self.tunnel.set_addresses(self._link_addresses(False))

    def _health_changed(self) -> None:
        """Health withdrawal: a relay whose TUN or native side is broken takes its route out
        (so the routing daemon withdraws it) until it is repaired, then puts it back unless
        drained."""
        problem = self.announcer.set_problem(self.health())
        if problem is not None:
            self._problem = problem
            self._retry_repair()

    def health(self) -> str | None:
        return self._problem or self._native

    def needs_restart(self) -> bool:
        """Only the TUN half: a restart cannot bring an uplink back."""
        return self._problem is not None

    # -- the native side: a route toward the served prefixes, other than through the TUN ----

    def _watch_relevant(self) -> Callable[[bytes], bool]:
        return either(super()._watch_relevant(), ipv6_route_change)

    def _check_link(self) -> None:
        if self.running:
            self._update_native()
        super()._check_link()

    def _recheck_native(self) -> None:
        if self._update_native():
            self._health_changed()

    def _update_native(self) -> bool:
        """Re-read the routing table; whether the native side's health changed (logged once)."""
        try:
            routes = self.tunnel.host_routes()
        except LinkError as error:
            self.log.warn("{error}: native IPv6 health unchanged", error=str(error))
            return False
        problem = native_problem(routes, self.config.served_prefixes, self.tunnel.index, self.config.interface)
        if problem == self._native:
            return False
        if problem is None:
            self.log.info("native IPv6 side is back: a route leads toward the served prefixes again")
        else:
            self.log.warn("{problem}: the relay withdraws until a route is back", problem=problem)
        self._native = problem
        return True

    # -- drain (teredoctl drain relay, the console's drain(), SIGTERM) ----------------------

    def drain(self, grace: float) -> Deferred[dict[str, Any]]:
        """Withdraw the route now, keep serving existing peers; fires with the anycast status
        once `grace` seconds are over."""
        return self.announcer.drain(grace)

    def undrain(self) -> dict[str, Any]:
        problem = self.announcer.undrain()
        if problem is not None:
            self._problem = problem
            self._retry_repair()
        return self.announcer.status()

    def startService(self) -> None:
        super().startService()
        self._native_recheck.start(NATIVE_RECHECK, now=False)
        self.log.info(
            "Teredo relay on {address}:{port}, {prefix} routed to {interface} (MTU {mtu}), up to {peers} peers",
            address=str(self.config.bind_address),
            port=self.bound_port,
            prefix=str(self.config.prefix),
            interface=self.tunnel.name,
            mtu=self.config.mtu,
            peers=self.config.max_peers,
        )

    def stopService(self) -> Deferred[None]:
        if self._native_recheck.running:
            self._native_recheck.stop()
        return super().stopService()

    def _stopped(self) -> None:
        counters = self.counters
        self.log.info(
            "Teredo relay stopped: {to_ipv6} packets to IPv6, {to_teredo} to Teredo peers, {dropped} dropped",
            to_ipv6=counters["to_ipv6"],
            to_teredo=counters["to_teredo"],
            dropped=sum(counters.drops().values()),
        )

    def status(self) -> dict[str, Any]:
        report = super().status()
        report.update(
            {
                "address": f"{self.config.bind_address}:{self.bound_port}",
                "interface": self.tunnel.name,
                "link_local": str(IPv6Address(RELAY_LINK_LOCAL)),
                "prefix": str(self.config.prefix),
                "mtu": self.config.mtu,
                "max_peers": self.config.max_peers,
                "peers": self.machine.peers.stats(),
                "anycast": self.announcer.status(),
            }
        )
        return report

    def peers(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self.machine.snapshot(self._seconds(), limit)

    def peer_count(self) -> int:
        return len(self.machine.peers)
