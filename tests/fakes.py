"""In-memory stand-ins shared by the tunnel, relay and client tests (no root, no sockets)."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Interface, IPv6Network
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import FakeDatagramTransport, MemoryReactorClock, _FakePort
from twisted.pair import testing

from teredo_appliance.native_health import Route
from teredo_appliance.netlink import LinkError, LinkState


class BigTunnel(testing.Tunnel):
    """MemoryIOSystem's TUN, able to carry a 1280-byte packet (the stock one stops at 1024)."""

    SEND_BUFFER_SIZE = 1500


def memory_tun_system() -> testing.MemoryIOSystem:
    system = testing.MemoryIOSystem()
    system.registerSpecialDevice(testing.Tunnel._DEVICE_NAME, BigTunnel)
    return system


class FakeLink:
    """Records what the Tunnel asks of netlink; operations named in `failing` raise LinkError.

    It also keeps the device as a kernel would (up, addresses, routes), for inspect(); a
    test plays another program by changing that: `gone`, `up`, `addresses`, `routes`.
    """

    devices = 0  # every FakeLink is a new device with an index of its own

    def __init__(self, ifname: str, calls: list[tuple], failing: set[str] | None = None) -> None:
        self.ifname, self.calls = ifname, calls
        self.failing = set() if failing is None else failing  # the caller may fill it later
        FakeLink.devices += 1
        self.index = FakeLink.devices
        self.gone = self.up_now = False
        self.addresses: set[IPv6Interface] = set()
        self.routes: set[IPv6Network] = set()
        # The rest of the host's routing table (ipv6_routes): by default an uplink's default route.
        self.host_routes: list[Route] = [Route(IPv6Network("::/0"), 1000)]

    def _do(self, *call: object) -> None:
        if call[0] in self.failing:
            raise LinkError(f"{self.ifname}: cannot {call[0]}: File exists")
        self.calls.append(call)
        if call[0] == "up":
            self.up_now = True
        elif call[0] == "add_address":
            self.addresses.add(call[1])  # type: ignore[arg-type]
        elif call[0] == "remove_address":
            self.addresses.discard(call[1])  # type: ignore[arg-type]
        elif call[0] == "add_route":
            self.routes.add(call[1])  # type: ignore[arg-type]
        elif call[0] == "remove_route":
            self.routes.discard(call[1])  # type: ignore[arg-type]

    def inspect(self) -> LinkState | None:
        if "inspect" in self.failing:
            raise LinkError(f"{self.ifname}: cannot inspect the device: Operation not permitted")
        if self.gone:
            return None
        return LinkState(self.index, self.up_now, frozenset(self.addresses), frozenset(self.routes))

    def ipv6_routes(self) -> list[Route]:
        if "ipv6_routes" in self.failing:
            raise LinkError(f"{self.ifname}: cannot read the IPv6 routing table: Operation not permitted")
        return [*self.host_routes, *(Route(route, self.index) for route in self.routes)]

    def prepare(self) -> None:
        self._do("prepare")

    def up(self, mtu: int) -> None:
        self._do("up", mtu)

    drops = {"tx_dropped": 0, "rx_dropped": 0}  # what drop_counts() reports; tests may set it

    def drop_counts(self) -> dict[str, int]:
        if "drop_counts" in self.failing:
            raise LinkError(f"{self.ifname}: cannot read statistics: No such device")
        return dict(self.drops)

    def add_address(self, address: IPv6Interface) -> None:
        self._do("add_address", address)

    def remove_address(self, address: IPv6Interface) -> None:
        self._do("remove_address", address)

    def add_route(self, prefix: IPv6Network, metric: int | None = None, protocol: int | None = None) -> None:
        self._do("add_route", prefix, metric, *(() if protocol is None else (protocol,)))

    def remove_route(self, prefix: IPv6Network, metric: int | None = None, protocol: int | None = None) -> None:
        self._do("remove_route", prefix, metric, *(() if protocol is None else (protocol,)))


class QuietWatch:
    """A NetWatch that hears nothing: a test calls `on_change()` itself to play a notification."""

    def __init__(self, on_change: Any, reactor: Any, **settings: Any) -> None:
        self.on_change, self.settings = on_change, settings
        self.started = self.stopped = 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        self.stopped += 1


class StoppablePort(_FakePort):
    stopped = False

    def stopListening(self) -> None:
        self.stopped = True


class UDPReactor(MemoryReactorClock):
    """MemoryReactorClock that also 'binds' UDP: the protocol gets a FakeDatagramTransport."""

    def __init__(self) -> None:
        super().__init__()
        self.udp_ports: list[tuple[int, Any, str, StoppablePort]] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        protocol.makeConnection(FakeDatagramTransport())
        listening = StoppablePort(IPv4Address("UDP", interface, port or 40000))
        self.udp_ports.append((port, protocol, interface, listening))
        return listening


def tun_device(system: testing.MemoryIOSystem) -> testing.Tunnel:
    """The one TUN device open on `system`."""
    [fd] = system._openFiles
    return system._openFiles[fd]


def kernel_sends(system: testing.MemoryIOSystem, reactor: MemoryReactorClock, *packets: bytes) -> None:
    """Packets the kernel routes to the TUN, then one read by its port."""
    for packet in packets:
        tun_device(system).addToReadBuffer(packet)
    [port] = reactor.getReaders()
    port.doRead()


class FakeLanEdge:
    """client_lan.LanEdge without sockets or netlink: records joins; `networks` is the LAN."""

    def __init__(
        self, reactor: Any, deliver: Any, counters: Any, networks: tuple[str, ...] = ("198.19.0.0/24",)
    ) -> None:
        self.deliver = deliver
        self.networks = [IPv4Network(n) for n in networks]
        self.joined: str | None = None
        self.stopped = False

    def attach(self, sender: Any, local_ip: str) -> list[Any]:
        self.joined = local_ip
        return self.networks

    def detach(self) -> None:
        self.joined = None

    def stop(self) -> None:
        self.detach()
        self.stopped = True


class InMemoryRelayHost:
    """Mixin for relay service tests: a memory TUN system, a UDP reactor, fake links that
    record their calls, and quiet netlink watches. `host_routes` (None: a default route)
    is what the host's other routes look like to every link made after it is set."""

    def set_up_host(self) -> None:
        self.system = memory_tun_system()
        self.reactor = UDPReactor()
        self.calls: list[tuple] = []
        self.failing: set[str] = set()
        self.links: list[FakeLink] = []
        self.watches: list[QuietWatch] = []
        self.host_routes: list[Route] | None = None

    def link(self, name: str) -> FakeLink:
        self.links.append(FakeLink(name, self.calls, self.failing))
        if self.host_routes is not None:
            self.links[-1].host_routes = self.host_routes
        return self.links[-1]

    def watch(self, on_change: Any, reactor: Any, **settings: Any) -> QuietWatch:
        self.watches.append(QuietWatch(on_change, reactor, **settings))
        return self.watches[-1]

    def start(self) -> None:
        self.service.privilegedStartService()
        self.service.startService()
