"""The IPv6 TUN device of the relay and the client: whole IPv6 packets in and out, plus link setup.

Built on twisted.pair.tuntap.TuntapPort in IFF_TUN | IFF_NO_PI mode with a minimal IPv6 packet
protocol of our own (twisted.pair.ip is IPv4-only). Link configuration goes through netlink
(teredo_appliance.netlink); every failure there is a LinkError naming the device and operation.

Life cycle, as a role uses it::

    tun = Tunnel("teredo", 1280, on_packet, counters=self.counters, reactor=self.reactor)
    tun.open()                                   # privilegedStartService: create, configure, read
    tun.set_addresses([IPv6Interface("fe80::ffff:ffff:ffff/64")])
    tun.add_route(IPv6Network("2001::/32"))
    tun.write(packet)                            # never raises
    d = tun.close()                              # stopService: return d

open(), set_addresses(), add_route(), remove_route() and close() need CAP_NET_ADMIN (and open()
access to /dev/net/tun): if the process drops root after privilegedStartService, later address
or route changes fail with a LinkError.

Offloads (teredo_appliance.offload, when its C extension is built): the device is opened with
IFF_VNET_HDR and TSO6, so one read may carry a TCP super-packet, cut here into the packets the
role sees; writes made between hold() and release() (a batch of datagrams from peers) leave
with each flow's in-order TCP segments merged into one GSO write.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterable
from ipaddress import IPv4Interface, IPv6Interface, IPv6Network
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.logger import Logger
from twisted.pair.raw import IRawPacketProtocol
from twisted.pair.tuntap import _TUN_KO_PATH, _TUNSETIFF, TuntapPort, _TunnelDescription
from zope.interface import implementer

from teredo_appliance import offload
from teredo_appliance.guard import PacketGuard
from teredo_appliance.native_health import Route
from teredo_appliance.netlink import Link, LinkError
from teredo_appliance.offload import PLAIN_HEADER, VNET_F_NEEDS_CSUM, VNET_GSO_NONE, VNET_HDR_LEN
from teredo_appliance.offload import available as offload_available
from teredo_appliance.stats import TUN_IN, TUN_OUT, Counters
from teredo_appliance.wire.constants import IFNAMSIZ, IPV6_HEADER_LENGTH

__all__ = ["LinkError", "Tunnel"]

# Read buffer: the largest MTU a TUN accepts, so a packet is never truncated even if an operator
# raises the MTU behind our back; reading into a 64 KiB buffer costs no more than into 1280 bytes.
READ_SIZE = 65535


@implementer(IRawPacketProtocol)
class _IPv6Packets(AbstractDatagramProtocol):
    """Hand each IPv6 packet read from the TUN to `on_packet`; count anything else as a drop.

    It declares IRawPacketProtocol only because TuntapPort insists on it to choose TUN mode;
    TuntapPort calls nothing but datagramReceived.
    """

    noisy = False  # the Tunnel logs one line when the device opens

    def __init__(self, on_packet: Callable[[bytes], None], counters: Counters,
                 on_segments: Callable[[list[bytes]], None] | None = None) -> None:
        self.on_packet = on_packet
        self.on_segments = on_segments
        self.counters = counters
        self._guard = PacketGuard(counters, "tun")
        self.vnet = False  # each read starts with a virtio_net_hdr (offloads on)

    def datagramReceived(self, datagram: bytes, partial: int = 0) -> None:
        if not self.vnet:
            self._packet(datagram)
        elif len(datagram) > VNET_HDR_LEN and datagram[1] == VNET_GSO_NONE and not datagram[0] & VNET_F_NEEDS_CSUM:
            self._packet(datagram[VNET_HDR_LEN:])  # a whole packet: the common case for ACKs
        else:
            try:
                packets = offload.segment(datagram)
            except ValueError as error:
                self.counters[TUN_IN] += len(datagram)
                self.counters.drop(f"tun.offload-{error}")
                return
            if datagram[1] != VNET_GSO_NONE:
                self.counters["tun.gso_reads"] += 1
                if self.on_segments is not None:
                    self.counters[TUN_IN] += sum(map(len, packets))  # IPv6, each: segment() checked
                    try:
                        self.on_segments(packets)
                    except Exception:
                        self._guard.failed()
                    return
            for packet in packets:
                self._packet(packet)

    def _packet(self, datagram: bytes) -> None:
        self.counters[TUN_IN] += len(datagram)
        if len(datagram) < IPV6_HEADER_LENGTH:
            self.counters.drop("tun.short")
        elif datagram[0] >> 4 != 6:
            self.counters.drop("tun.not_ipv6")
        else:
            try:
                self.on_packet(datagram)
            except Exception:
                self._guard.failed()


class _TunPort(TuntapPort):
    """TuntapPort that closes /dev/net/tun again when TUNSETIFF fails (Twisted leaks the
    descriptor: every failed open, e.g. a reload naming an existing non-TUN device, cost one),
    and that brackets each wake-up's reads with `batch` = (hold, release), so what the
    packets make the role send leaves in batches."""

    batch: tuple[Callable[[], None], Callable[[], None]] | None = None
    offload = False  # ask for IFF_VNET_HDR and TSO6 (the real /dev/net/tun only)
    vnet = False  # the device was opened with IFF_VNET_HDR

    def doRead(self) -> None:
        if self.batch is None:
            super().doRead()
            return
        hold, release = self.batch
        hold()
        try:
            super().doRead()
        finally:
            release()

    def _openTunnel(self, name: bytes, mode: Any) -> Any:
        system = self._system
        fileno = system.open(_TUN_KO_PATH, system.O_RDWR | system.O_CLOEXEC | system.O_NONBLOCK)
        flags = mode.value | (offload.IFF_VNET_HDR if self.offload else 0)
        try:
            result = system.ioctl(fileno, _TUNSETIFF, struct.pack(f"{IFNAMSIZ}sH", name, flags))
        except OSError:
            system.close(fileno)
            raise
        self.vnet = self.offload
        if self.vnet:
            try:
                system.ioctl(fileno, offload.TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
                system.ioctl(fileno, offload.TUNSETOFFLOAD, offload.TUN_F_CSUM | offload.TUN_F_TSO6)
            except OSError:  # headers without offloads: plain packets, still readable
                pass
        return _TunnelDescription(fileno, result[:IFNAMSIZ].strip(b"\x00"))


class Tunnel:
    """One IPv6 TUN device: created and configured by open(), removed by close().

    `on_packet(packet)` receives every IPv6 packet the kernel routes to the device (at least a
    whole IPv6 header, version 6; anything else is counted as drop "tun.short" or
    "tun.not_ipv6"). `counters` is shared with the role if given. `reactor` and `system` are
    passed to TuntapPort (tests use twisted.pair.testing.MemoryIOSystem as `system`);
    `link_factory(ifname)` returns the netlink configurator (tests pass a fake). `batch`:
    (hold, release) called around each wake-up's reads (the role's batched UDP sends).
    `offload`: use the TUN offloads (default: when the C extension is there and `system` is
    the real one); `on_segments(packets)` then receives the segments of each TCP super-packet
    at once (default: `on_packet` for each).

    The tunnel remembers the addresses and routes it added, so close() removes exactly those
    even on a persistent device; a non-persistent TUN (the usual case) vanishes when its
    descriptor closes, taking everything with it.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        mtu: int,
        on_packet: Callable[[bytes], None],
        *,
        counters: Counters | None = None,
        reactor: Any = None,
        system: Any = None,
        link_factory: Callable[[str], Link] = Link,
        batch: tuple[Callable[[], None], Callable[[], None]] | None = None,
        offload: bool | None = None,
        on_segments: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self.name = name
        self._offload = offload_available() and system is None if offload is None else offload
        self._held: list[bytes] | None = None  # writes waiting for release() (offloads only)
        self._batch = batch
        self._requested_name = name  # `name` becomes the kernel's (a pattern like "teredo%d" expands)
        self.mtu = mtu
        self.counters = Counters() if counters is None else counters
        self._protocol = _IPv6Packets(on_packet, self.counters, on_segments)
        self._reactor = reactor
        self._system = system
        self._link_factory = link_factory
        self._port: TuntapPort | None = None
        self.index: int | None = None  # the kernel's ifindex of our device, once open
        self._closed: Deferred[None] = succeed(None)  # the last close, perhaps still under way
        self._link: Link | None = None
        self._addresses: list[IPv4Interface | IPv6Interface] = []
        self._routes: list[tuple[IPv6Network, int | None, int | None]] = []  # prefix, metric, protocol

    def open(self) -> None:
        """Privileged: create the TUN, make it an IPv6 link whose addresses only we choose (see
        Link.prepare), set the MTU, bring it up and start reading.

        On failure LinkError says why and the device is closed on the next reactor turn.
        `name` becomes the kernel's name for the device (it may expand a pattern like
        "teredo%d").
        """
        if self._port is not None:
            raise RuntimeError(f"{self.name}: TUN device already open")
        if not 0 < len(os.fsencode(self.name)) < IFNAMSIZ:
            raise LinkError(f"{self.name!r}: cannot open TUN device: a name has 1 to {IFNAMSIZ - 1} bytes")
        port = _TunPort(
            os.fsencode(self.name),
            self._protocol,
            maxPacketSize=READ_SIZE,
            reactor=self._reactor,
            system=self._system,
        )
        port.batch = self._batch
        port.offload = self._offload
        try:
            port.startListening()
        except CannotListenError as e:
            reason = os.strerror(e.socketError.errno) if e.socketError.errno else str(e.socketError)
            raise LinkError(f"{self.name}: cannot open TUN device: {reason}") from e
        self._port = port
        self._protocol.vnet = port.vnet
        self.name = os.fsdecode(port.interface)
        self._link = self._link_factory(self.name)
        try:
            self._link.prepare()
            self._link.up(self.mtu)
            state = self._link.inspect()
        except LinkError:
            self.close()
            raise
        self.index = None if state is None else state.index
        self.log.info("TUN device {name} open, MTU {mtu}", name=self.name, mtu=self.mtu)

    def set_addresses(self, addresses: Iterable[IPv4Interface | IPv6Interface]) -> None:
        """Privileged: make `addresses` the device's addresses.

        Addresses set earlier and no longer wanted are removed first, then new ones added, so a
        changed Teredo address replaces the old one (also when only its prefix length changes).
        The kernel adds each address's prefix route itself (2001::/32 for a Teredo address /32).
        """
        link = self._open_link("set addresses")
        wanted = list(dict.fromkeys(addresses))
        for address in [a for a in self._addresses if a not in wanted]:
            link.remove_address(address)
            self._addresses.remove(address)
        for address in wanted:
            if address not in self._addresses:
                link.add_address(address)
                self._addresses.append(address)

    def add_route(self, prefix: IPv6Network, metric: int | None = None, protocol: int | None = None) -> None:
        """Privileged: route `prefix` to the device (kernel default metric 1024 and protocol
        static if None)."""
        self._open_link("add a route").add_route(prefix, metric, protocol)
        self._routes.append((prefix, metric, protocol))

    def remove_route(self, prefix: IPv6Network, metric: int | None = None, protocol: int | None = None) -> None:
        """Privileged: remove a route added with add_route (same prefix, metric and protocol).
        It is forgotten even if the kernel no longer had it (a repair must not bring it back)."""
        route = (prefix, metric, protocol)
        if route in self._routes:
            self._routes.remove(route)
        self._open_link("remove a route").remove_route(prefix, metric, protocol)

    @property
    def addresses(self) -> tuple[IPv4Interface | IPv6Interface, ...]:
        """The addresses we set (and have not removed)."""
        return tuple(self._addresses)

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def has_route(self, prefix: IPv6Network) -> bool:
        """Whether we set a route to `prefix` (and have not removed it)."""
        return any(route[0] == prefix for route in self._routes)

    def host_routes(self) -> list[Route]:
        """The kernel's main-table IPv6 routes, through any device (raises LinkError)."""
        return self._open_link("read the routing table").ipv6_routes()

    def write(self, packet: bytes) -> None:
        """Hand one IPv6 packet to the kernel (while held, at release()). Never raises: a
        packet the kernel refuses (queue full: EAGAIN/ENOBUFS, or any other error) or one
        written while closed is counted as drop "tun.write_<errno>" / "tun.closed" and lost,
        as IP allows."""
        if self._held is not None:
            self._held.append(packet)
        elif self._protocol.vnet:
            self._put(PLAIN_HEADER + packet, len(packet))
        else:
            self._put(packet, len(packet))

    def hold(self) -> None:
        """Keep the following writes until release(), to merge them (with offloads only)."""
        if self._protocol.vnet and self._held is None:
            self._held = []

    def release(self) -> None:
        """Write what was held: each flow's in-order TCP segments as one GSO write."""
        held, self._held = self._held, None
        if not held:
            return
        for frame in offload.coalesce(held):
            if frame[1] != VNET_GSO_NONE:
                self.counters["tun.gso_writes"] += 1
            self._put(frame, len(frame) - VNET_HDR_LEN)

    def _put(self, frame: bytes, size: int) -> None:
        port = self._port
        if port is None:
            self.counters.drop("tun.closed")
            return
        try:
            port.write(frame)
        except OSError as e:
            self.counters.drop("tun.write_" + errno.errorcode.get(e.errno or 0, "error").lower())
            return
        self.counters[TUN_OUT] += size

    def close(self) -> Deferred[None]:
        """Remove the routes and addresses we added, then close the device.

        Removal is best effort (a failure is logged, not raised) so that stopping always
        completes. The Deferred fires once the descriptor is closed, when a non-persistent TUN
        is gone: open a successor with the same name only after that.
        """
        self.release()
        port, link = self._port, self._link
        self._port = self._link = None
        if port is None or link is None:
            # Perhaps a failed open() is still closing the device: whoever waits here (a
            # stopping role, then a reload restoring its predecessor) waits for that too.
            return DeferredList([self._closed], consumeErrors=True).addCallback(lambda _: None)
        failures = [
            *(self._try(link.remove_route, *route) for route in reversed(self._routes)),
            *(self._try(link.remove_address, address) for address in reversed(self._addresses)),
        ]
        failures = [failure for failure in failures if failure]
        if failures:  # typical after `twistd -u`: netlink needs CAP_NET_ADMIN, closing does not
            self.log.info("{name}: {failures}; closing the device removes them", name=self.name,
                          failures="; ".join(failures))
        self._routes.clear()
        self._addresses.clear()
        self._closed = port.stopListening()
        return DeferredList([self._closed], consumeErrors=True).addCallback(lambda _: None)

    def status(self) -> dict[str, Any]:
        """JSON-friendly: device name, open or not, MTU, the addresses and routes we set."""
        return {
            "interface": self.name,
            "open": self._port is not None,
            "mtu": self.mtu,
            "offload": self._protocol.vnet,
            "addresses": [str(a) for a in self._addresses],
            "routes": [{"prefix": str(p), "metric": m, "protocol": proto} for p, m, proto in self._routes],
        }

    def problem(self) -> str | None:
        """What another program changed on our open device (deleted it, set it down, removed
        an address or route we set), as the kernel has it now; None if nothing or not open."""
        link = self._link
        if link is None:
            return None
        try:
            state = link.inspect()
        except LinkError as e:
            return str(e)
        if state is None or state.index != self.index:
            return f"TUN {self.name} missing"
        if not state.up:
            return f"TUN {self.name} down"
        lost = [str(a) for a in self._addresses if a not in state.addresses]
        lost += [f"route {route[0]}" for route in self._routes if route[0] not in state.routes]
        return f"TUN {self.name} lost {', '.join(lost)}" if lost else None

    def repair(self) -> Deferred[None]:
        """Privileged: make the device what we set up again, fired when done (or failed with
        LinkError). A deleted device is created anew, once its old descriptor is closed, with
        our addresses and routes; one still there is brought up and given back what it lost."""
        link = self._open_link("repair the device")
        try:
            state = link.inspect()
            if state is not None and state.index == self.index:
                if not state.up:
                    link.up(self.mtu)
                    state = link.inspect() or state
                for address in self._addresses:
                    if address not in state.addresses:
                        link.add_address(address)
                for route in self._routes:
                    if route[0] not in state.routes:
                        link.add_route(*route)
                return succeed(None)
        except LinkError as e:
            return fail(e)
        addresses, routes = list(self._addresses), list(self._routes)
        port, self._port, self._link = self._port, None, None
        self._addresses, self._routes = [], []
        assert port is not None
        self._closed = port.stopListening()  # the device is gone: nothing to remove first

        def reopen(_: object) -> None:
            self.name = self._requested_name
            self.open()
            self.set_addresses(addresses)
            for route in routes:
                self.add_route(*route)

        return DeferredList([self._closed], consumeErrors=True).addCallback(reopen)

    def kernel_drops(self) -> dict[str, int] | None:
        """The kernel's drop counters of the open device (tx_dropped: its queue towards us
        overflowed), read now over netlink: no cost per packet. None if closed or unreadable."""
        link = self._link
        if link is None:
            return None
        try:
            return link.drop_counts()
        except LinkError:
            return None

    def _open_link(self, operation: str) -> Link:
        if self._link is None:
            raise RuntimeError(f"{self.name}: cannot {operation}: TUN device not open")
        return self._link

    @staticmethod
    def _try(remove: Callable[..., None], *args: Any) -> str | None:
        """Run one removal; its error message, or None."""
        try:
            remove(*args)
        except LinkError as e:
            return str(e).split(": ", 1)[-1]
        return None
