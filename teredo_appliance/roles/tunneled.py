"""What the relay and the client share: one UDP socket, one TUN device, one timer.

Each owns a sans-I/O machine; this base owns the I/O around it, so both open their
resources all-or-nothing as root, release them with one Deferred that fires once the
port and device are really gone (a reload may rebind right after), and wake their
machine with a single coalesced timer.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IDelayedCall

from teredo_appliance.netlink import Link
from teredo_appliance.roles.base import RoleService
from teredo_appliance.roles.udp import TeredoUDP, listen_udp
from teredo_appliance.tunnel import Tunnel

# Timer coalescing: under a flood every peer has its own retry deadline; waking at most
# every 100 ms batches them, and delays a 2 s bubble retry by at most that much.
TIMER_GRANULARITY = 0.1
DISCARD_PORT = 9  # any port: connect() on a UDP socket only picks a route and a source


def kernel_source(family: socket.AddressFamily, destination: str) -> str | None:
    """The local address the kernel would send from towards `destination` (no packet is sent)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((destination, DISCARD_PORT))
            return probe.getsockname()[0]
    except OSError:  # no route, or a scoped (link-local) destination
        return None


class TunneledRole(RoleService):
    """A role service with a UDP socket on bind_address:bind_port and a TUN `interface`.

    Subclasses handle `_on_datagram(data, (host, port))` and `_on_packet(packet)`, run
    their timers in `_on_timer_due(now)` and ask for it with `_wake(when)`.
    `tun_system` (twisted.pair.testing.MemoryIOSystem) and `link_factory` let tests run
    the whole service without root.
    """

    def __init__(
        self, config: Any, reactor: Any = None, *, tun_system: Any = None,
        link_factory: Callable[[str], Link] = Link,
    ) -> None:
        super().__init__(config, reactor)
        self._seconds = self.reactor.seconds
        self.udp = TeredoUDP(self._on_datagram, self.counters, self.role)
        self.tunnel = Tunnel(
            config.interface, config.mtu, self._on_packet, counters=self.counters, reactor=self.reactor,
            system=tun_system, link_factory=link_factory,
        )
        self._port: Any = None
        self._timer: IDelayedCall | None = None

    def _on_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        raise NotImplementedError

    def _on_packet(self, packet: bytes) -> None:
        raise NotImplementedError

    def _on_timer_due(self, now: float) -> None:
        raise NotImplementedError

    def _configure_link(self) -> None:
        """Addresses and routes the device needs from the start (runs as root); none by default."""

    def _wake(self, when: float) -> None:
        """Make sure `_on_timer_due` runs by `when` (a little later, see TIMER_GRANULARITY)."""
        timer = self._timer
        if timer is not None:
            if timer.getTime() <= when:
                return
            timer.cancel()
        self._timer = self.reactor.callLater(max(when - self._seconds(), TIMER_GRANULARITY), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._on_timer_due(self._seconds())

    def privilegedStartService(self) -> None:
        """Create and configure the TUN, then bind UDP; all or nothing."""
        self.tunnel.open()
        try:
            self._configure_link()
            self._port = listen_udp(self.reactor, self.udp, str(self.config.bind_address), self.config.bind_port)
        except Exception:
            self.tunnel.close()
            raise
        super().privilegedStartService()

    def stopService(self) -> Deferred[None]:
        """Cancel the timer, close the port and remove the TUN; fires once both are gone."""
        super().stopService()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        port, self._port = self._port, None
        closing = [self.tunnel.close(), *self._closing()]
        if port is not None:
            closing.append(maybeDeferred(port.stopListening))
        return DeferredList(closing, consumeErrors=True).addCallback(lambda _: self._stopped())

    def _closing(self) -> list[Deferred[Any]]:
        """Anything else to wait for on stop (the client's hook runs)."""
        return []

    def _stopped(self) -> None:
        """Called once the port and device are gone (e.g. for a closing log line)."""

    def status(self) -> dict[str, Any]:
        """The base report plus the TUN's kernel drop counters (seen otherwise only in `ip -s link`)."""
        report = super().status()
        report["tun_kernel_drops"] = self.tunnel.kernel_drops()
        return report

    @property
    def bound_port(self) -> int | None:
        return None if self._port is None else self._port.getHost().port
