"""What the relay and the client share: one UDP socket, one TUN device, one timer.

Each owns a sans-I/O machine; this base owns the I/O around it, so both open their
resources all-or-nothing as root, release them with one Deferred that fires once the
port and device are really gone (a reload may rebind right after), wake their machine
with a single coalesced timer, and watch their TUN over netlink: a device deleted, set
down or stripped of its routes by another program is reported as the role's health
and rebuilt as it was.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IDelayedCall

from teredo_appliance.netlink import Link
from teredo_appliance.netwatch import TUN_GROUPS, NetWatch, tun_watch
from teredo_appliance.roles.base import RoleService
from teredo_appliance.roles.udp import TeredoUDP, listen_udp
from teredo_appliance.tunnel import Tunnel

# Timer coalescing: under a flood every peer has its own retry deadline; waking at most
# every 100 ms batches them, and delays a 2 s bubble retry by at most that much.
TIMER_GRANULARITY = 0.1
DISCARD_PORT = 9  # any port: connect() on a UDP socket only picks a route and a source
REPAIR_RETRY = 10.0  # seconds between tries to repair a TUN the kernel would not let us fix


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
        link_factory: Callable[[str], Link] = Link, link_watch: Callable[..., Any] = NetWatch,
    ) -> None:
        super().__init__(config, reactor)
        self._seconds = self.reactor.seconds
        self.udp = TeredoUDP(self._on_datagram, self.counters, self.role, deliver_batch=self._on_batch)
        self.tunnel = Tunnel(
            config.interface, config.mtu, self._on_packet, counters=self.counters, reactor=self.reactor,
            system=tun_system, link_factory=link_factory, batch=(self.udp.hold, self.udp.release),
            on_segments=self._on_segments,
        )
        self._port: Any = None
        self._timer: IDelayedCall | None = None
        # Another program may delete the TUN, set it down or remove its routes: notice, repair.
        self.link_watch = link_watch(self._check_link, self.reactor, groups=TUN_GROUPS,
                                     relevant=self._watch_relevant())
        self._problem: str | None = None
        self._repairing = False
        self._recheck: IDelayedCall | None = None

    def _watch_relevant(self) -> Callable[[bytes], bool]:
        """Which netlink notifications call `_check_link`: those touching our TUN."""
        return tun_watch(lambda: self.tunnel.index)

    def _on_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        raise NotImplementedError

    def _on_packet(self, packet: bytes) -> None:
        raise NotImplementedError

    def _on_segments(self, packets: list[bytes]) -> None:
        """The segments of one TCP super-packet from the TUN (TUN offloads)."""
        raise NotImplementedError

    def _on_batch(self, batch: list[tuple[bytes, tuple[str, int]]]) -> None:
        """One read's datagrams: what they make us write to the TUN leaves together, so a
        flow's in-order TCP segments become one write (with the TUN's offloads)."""
        self.tunnel.hold()
        try:
            self._on_datagrams(batch)
        finally:
            self.tunnel.release()

    def _on_datagrams(self, batch: list[tuple[bytes, tuple[str, int]]]) -> None:
        """One read's datagrams, in order: by default `_on_datagram` each, a failure costing
        that datagram only."""
        deliver, guard = self._on_datagram, self.udp.guarded()
        for data, address in batch:
            try:
                deliver(data, address)
            except Exception:
                guard.failed()

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
            self._port = listen_udp(self.reactor, self.udp, str(self.config.bind_address), self.config.bind_port,
                                    batched=True)
        except Exception:
            self.tunnel.close()
            raise
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        try:
            self.link_watch.start()
        except OSError as error:
            self.log.warn("cannot watch netlink ({error}): a TUN changed from outside is repaired only "
                          "by a reload", error=str(error))

    def stopService(self) -> Deferred[None]:
        """Cancel the timers, close the port and remove the TUN; fires once both are gone."""
        super().stopService()
        self.link_watch.stop()
        for timer in (self._timer, self._recheck):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._recheck = None
        port, self._port = self._port, None
        closing = [self.tunnel.close(), *self._closing()]
        if port is not None:
            closing.append(maybeDeferred(port.stopListening))
        return DeferredList(closing, consumeErrors=True).addCallback(lambda _: self._stopped())

    # -- the TUN as others may change it ---------------------------------------------------

    def health(self) -> str | None:
        return self._problem

    def _check_link(self) -> None:
        """Compare the TUN with what we set up; repair what another program changed."""
        self._recheck = None
        if not self.running or self._repairing:
            return
        problem = self._problem = self.tunnel.problem()
        self._health_changed()
        if problem is None:
            return
        self.log.warn("{problem}: repairing", problem=self._problem)
        self._repairing = True
        self.tunnel.repair().addCallbacks(self._repaired, self._repair_failed)

    def _repaired(self, _: object) -> None:
        self._repairing = False
        if not self.running:
            return
        problem = self._problem = self.tunnel.problem()
        if problem is None:
            self.counters["tun_repaired"] += 1
            self.log.info("{name} repaired: device, addresses and routes are back", name=self.tunnel.name)
        self._health_changed()
        if problem is not None:
            self._retry_repair()

    def _repair_failed(self, failure: Any) -> None:
        self._repairing = False
        self._problem = f"{self._problem}; repair failed: {failure.getErrorMessage()}"
        self.log.error("{problem}; next try in {t:.0f} s", problem=self._problem, t=REPAIR_RETRY)
        self._health_changed()
        self._retry_repair()

    def _health_changed(self) -> None:
        """`_problem` was just set from the device (None: it works as set up); the relay
        withdraws or re-announces its route here. Nothing by default."""

    def _retry_repair(self) -> None:
        if self.running and self._recheck is None:
            self._recheck = self.reactor.callLater(REPAIR_RETRY, self._check_link)

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
