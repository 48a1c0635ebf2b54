"""The client role as a Twisted service: UDP port, TUN, resolver, netlink watch, hook, one timer.

Decisions live in `client_machine` (qualification, NAT type, refresh, failover) and
`client_datapath` (the data path); this module wires them to the reactor. What it puts on
the TUN once qualified is what Miredo's client does: the Teredo address /32, the
link-local fe80::ffff:ffff:ffff/64 and a default route of metric 1029, so that any
native IPv6 default route wins. All of it goes when connectivity is lost or on stop.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, IPv6Interface, IPv6Network
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import LogLevel

from teredo_appliance.config_model import ClientConfig
from teredo_appliance.hook import Hook, hook_environment
from teredo_appliance.netlink import Link, LinkError
from teredo_appliance.netwatch import NetWatch
from teredo_appliance.roles.client_datapath import ClientPeers
from teredo_appliance.roles.client_lan import LanEdge
from teredo_appliance.roles.client_local import LocalPeers
from teredo_appliance.roles.client_machine import NAT_SYMMETRIC, Qualification, Qualifier
from teredo_appliance.roles.nat_behaviour import describe as describe_nat_special
from teredo_appliance.roles.tunneled import TunneledRole, kernel_source
from teredo_appliance.stats import Counters
from teredo_appliance.upnp.client import IGDClient, PortMapper
from teredo_appliance.wire.address import int_to_ipv4, ipv4_to_int
from teredo_appliance.wire.constants import LINK_LOCAL, TEREDO_PORT
from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.teredo import AUTH_TYPE, parse_datagram

DEFAULT_ROUTE = IPv6Network("::/0")
DEFAULT_ROUTE_METRIC = 1029  # Miredo's: above the kernel's 1024, so native IPv6 wins
LINK_LOCAL_INTERFACE = IPv6Interface((LINK_LOCAL, 64))


def route_source(destination: int) -> int | None:
    """The local IPv4 address the kernel would use towards `destination` (no packet is sent)."""
    source = kernel_source(socket.AF_INET, int_to_ipv4(destination))
    return None if source is None else ipv4_to_int(source)


class ClientService(TunneledRole):
    """A Teredo client (RFC 4380 §5.2, RFC 5991) on UDP bind_address:bind_port and TUN `interface`.

    Tests inject `tun_system` (twisted.pair.testing.MemoryIOSystem), `link_factory`,
    `netwatch` (the uplink) and `link_watch` (the TUN) factories and a `rng`, so the whole
    service runs without root.
    """

    role = "client"

    def __init__(
        self,
        config: ClientConfig,
        reactor: Any = None,
        *,
        tun_system: Any = None,
        link_factory: Callable[[str], Link] = Link,
        netwatch: Callable[[Callable[[], None], Any], Any] = NetWatch,
        link_watch: Callable[..., Any] = NetWatch,
        local_address: Callable[[int], int | None] | None = None,
        rng: Any = None,
        port_mapper: Callable[[int, Counters], PortMapper] | None = None,
        lan_edge: Callable[..., Any] = LanEdge,
    ) -> None:
        """`port_mapper(port, counters)`: the UPnP mapping of our UDP port (extensions.upnp; tests inject one);
        `lan_edge(reactor, deliver, counters)`: the discovery socket (client_lan.LanEdge; tests inject one)."""
        super().__init__(config, reactor, tun_system=tun_system, link_factory=link_factory, link_watch=link_watch)
        self._local = local_address or self._local_address
        self.qualifier = Qualifier(
            config, self._send_to, self._resolve, self._on_qualification,
            log=self._machine_log, local_address=self._local, local_port=lambda: self.bound_port,
            counters=self.counters, rng=rng,
        )
        self.local = LocalPeers(self.udp.send, self.counters, discovery=config.local_discovery,
                                hairpinning=config.extensions.hairpinning, on_link=self._on_link, rng=rng)
        self.data = ClientPeers(self.udp.send, self.tunnel.write, self.counters, rng=rng,
                                heard_server=self.qualifier.heard_from_server, local=self.local,
                                symmetric_nat=config.extensions.symmetric_nat,
                                server_load_reduction=config.extensions.server_load_reduction,
                                send_all=self.udp.send_all)
        self.lan = lan_edge(self.reactor, self._on_discovery, self.counters) if config.local_discovery else None
        self._lan_networks: list[tuple[int, int]] = []  # (network, mask) on-link for discovery
        self.netwatch = netwatch(self._on_network_change, self.reactor)
        self.hook = None if config.hook is None else Hook(config.hook, self.reactor)
        self._hook_old: dict[str, str] | None = None
        self._retired_hook: Hook | None = None  # a hook removed by a reload, maybe still running
        self._server: tuple[str, int] | None = None  # our server's (ip, TEREDO_PORT) once qualified
        self._route = False
        self._port_mapper = port_mapper or self._igd_mapping
        self.upnp: PortMapper | None = None

    # -- packets ---------------------------------------------------------------------------

    def _machine_log(self, level: str, format: str, **fields: Any) -> None:
        """The machine's log events, into this service's logger (its namespace, its level)."""
        self.log.emit(LogLevel.levelWithName(level), format, **fields)

    def reconfigurable(self, config: ClientConfig) -> bool:
        return self.qualifier.can_reconfigure(config)

    def reconfigure(self, config: ClientConfig) -> None:
        """refresh_interval and fallback_servers go to the qualifier; a new hook script runs
        from the next change of state on, after the runs already queued (still one at a time)."""
        if config.hook != self.config.hook:
            if config.hook is None:
                self._retired_hook, self.hook = self.hook, None  # stop still waits for its runs
            elif self.hook is None:
                self.hook = Hook(config.hook, self.reactor)
            else:
                self.hook.path = config.hook
        self.qualifier.reconfigure(config, self._seconds())
        super().reconfigure(config)
        if self.running:
            self._reschedule()

    def _on_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        now = self._seconds()
        if len(data) > 1 and data[0] == 0 and data[1] == AUTH_TYPE:  # only RAs carry one for a client
            try:
                datagram = parse_datagram(data)
            except ParseError as error:
                self.counters.drop(error.reason)
                return
            self.qualifier.receive(datagram, ipv4_to_int(address[0]), address[1], now)
            self._reschedule()
            return
        if self.data.from_udp(data, address[0], address[1], now):
            self._reschedule()

    def _on_packet(self, packet: bytes) -> None:
        if self.data.from_tun(packet, self._seconds()):
            self._reschedule()

    def _on_segments(self, packets: list[bytes]) -> None:
        if self.data.from_tun_segments(packets, self._seconds()):
            self._reschedule()

    def _on_discovery(self, data: bytes, address: tuple[str, int]) -> None:
        now = self._seconds()
        self.local.from_discovery(data, address[0], address[1], now)
        self._reschedule()

    def _on_link(self, ip: int) -> bool:
        return any(ip & mask == network for network, mask in self._lan_networks)

    def _send_to(self, payload: bytes, ip: int, port: int) -> None:
        self.udp.send(payload, (int_to_ipv4(ip), port))

    # -- qualification -------------------------------------------------------------------

    def _on_qualification(self, qualification: Qualification | None) -> None:
        """Reconfigure the TUN and data path for a new (or no) Teredo address; run the hook."""
        if qualification is None:
            self._server = None
            self.data.attach(None)
            self._attach_lan(None, None)
            self._configure([], route=False)
            self._run_hook("down", None)
            return
        self._server = (int_to_ipv4(qualification.server), TEREDO_PORT)
        self.data.attach(qualification.address, qualification.server,
                         behind_symmetric=qualification.nat_type == NAT_SYMMETRIC)
        local = self._local(qualification.server)
        self._attach_lan(qualification.address, None if local is None else int_to_ipv4(local))
        address = IPv6Interface((qualification.address, 32))
        self._configure([LINK_LOCAL_INTERFACE, address], route=True)
        self._run_hook("up", str(address.ip))

    def _attach_lan(self, address: bytes | None, local_ip: str | None) -> None:
        """Discovery and hairpinning for a new qualification: join the discovery group on
        the LAN interface, learn its subnets (on-link), give our local address to trailers."""
        if self.lan is not None:
            self._lan_networks = []
            if address is None or local_ip is None:
                self.lan.detach()
            else:
                try:
                    networks = self.lan.attach(getattr(self.udp.transport, "socket", None), local_ip)
                except OSError as error:
                    self.counters["client.local_discovery_error"] += 1
                    self.log.warn("local discovery unavailable on {local}: {error}", local=local_ip, error=str(error))
                else:
                    self._lan_networks = [(int(n.network_address), int(n.netmask)) for n in networks]
        mapping = None if local_ip is None or self.bound_port is None else (local_ip, self.bound_port)
        self.local.attach(address, mapping, self._seconds())

    def _configure(self, addresses: list[IPv6Interface], route: bool) -> None:
        try:
            if not route and self._route:
                self.tunnel.remove_route(DEFAULT_ROUTE, DEFAULT_ROUTE_METRIC)
                self._route = False
            self.tunnel.set_addresses(addresses)
            if route and not self._route:
                self.tunnel.add_route(DEFAULT_ROUTE, DEFAULT_ROUTE_METRIC)
                self._route = True
        except (LinkError, RuntimeError) as error:
            self.counters["client.link_error"] += 1
            self.log.error("cannot configure {interface}: {error}", interface=self.tunnel.name, error=str(error))

    def _run_hook(self, state: str, address: str | None) -> None:
        if self.hook is None:
            return
        lladdress = str(IPv6Address(LINK_LOCAL))
        self.hook.run(hook_environment(state, self.tunnel.name, lladdress, self.config.mtu, address, self._hook_old))
        if state == "up":
            self._hook_old = {"ADDRESS": address or "", "LLADDRESS": lladdress, "MTU": str(self.config.mtu)}

    def _resolve(self, name: str) -> None:
        d = self.reactor.resolve(name)
        d.addCallbacks(lambda ip: ipv4_to_int(ip), lambda failure: None)
        d.addCallback(self._resolved, name)

    def _resolved(self, ip: int | None, name: str) -> None:
        self.qualifier.resolved(name, ip, self._seconds())
        self._reschedule()

    def _on_network_change(self) -> None:
        self.log.info("Host IPv4 address or default route changed: re-qualifying now")
        self.qualifier.network_changed(self._seconds())
        self._reschedule()

    def _local_address(self, server: int) -> int | None:
        bound = self.config.bind_address
        return int(bound) if bound != IPv4Address(0) else route_source(server)

    # -- the one timer -----------------------------------------------------------------------

    def _reschedule(self) -> None:
        deadlines = [d for d in (self.qualifier.next_deadline(), self.data.next_deadline()) if d is not None]
        if deadlines:
            self._wake(min(deadlines))

    def _on_timer_due(self, now: float) -> None:
        self.qualifier.on_timer(now)
        self.data.on_timer(now)
        self._reschedule()

    # -- life cycle ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        try:
            self.netwatch.start()
        except OSError as error:
            self.log.warn("cannot watch netlink ({error}): network changes wait for the next refresh",
                          error=str(error))
        self.log.info(
            "Teredo client on {address}:{port}, TUN {interface} (MTU {mtu}), server {server}",
            address=str(self.config.bind_address), port=self.bound_port, interface=self.tunnel.name,
            mtu=self.config.mtu, server=", ".join([self.config.server_address, *self.config.fallback_servers]),
        )
        if self.config.extensions.upnp and self.bound_port is not None:
            # RFC 6081 §5.3: map the port first, so that the server already sees the mapped
            # port. With no IGD on the LAN, qualification waits the SSDP search window
            # (upnp.client.SEARCH_WINDOW), no longer; with one, the IGD's answers.
            self.upnp = self._port_mapper(self.bound_port, self.counters)
            self.upnp.startService()
            self.upnp.settled().addCallback(lambda _: self._start_qualifying())
        else:
            self._start_qualifying()

    def _igd_mapping(self, port: int, counters: Counters) -> PortMapper:
        return PortMapper(IGDClient(self.reactor, counters=counters), port)

    def _start_qualifying(self) -> None:
        if self.running:
            self.qualifier.start(self._seconds())
            self._reschedule()

    def stopService(self) -> Deferred[None]:
        """Forget the qualification, close port and TUN (its addresses and route go with it)."""
        self.netwatch.stop()
        if self.qualifier.qualification is not None:
            self._run_hook("down", None)
        self._run_hook("destroy", None)
        self.qualifier.stop()
        return super().stopService()

    def _closing(self) -> list[Deferred[Any]]:
        waits = [hook.wait() for hook in (self.hook, self._retired_hook) if hook is not None]
        if self.lan is not None and (closed := self.lan.stop()) is not None:
            waits.append(closed)
        if self.upnp is not None:
            waits.append(self.upnp.stopService())  # deletes the mapping on the IGD
        return waits

    # -- reporting -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        report = super().status()
        report.update(self.qualifier.status())
        last = self.qualifier.last_qualified
        report["last_qualified"] = None if last is None else f"{self._seconds() - last:.0f} s ago"
        server_ip = self.qualifier.server.ip
        local = None if server_ip is None else self._local(server_ip)
        report.update(
            {
                "local": None if local is None else f"{int_to_ipv4(local)}:{self.bound_port}",
                "interface": self.tunnel.name,
                "mtu": self.config.mtu,
                "refresh_interval": self.config.refresh_interval,
                "peers": self.data.stats(),
                "upnp": None if self.upnp is None else self.upnp.status(),
                "nat_special": self._nat_special(),
                "nat_special_behaviour": describe_nat_special(self._nat_special()),
            }
        )
        report.update(self.local.status(self._seconds()))
        return report

    def nat_report(self) -> dict[str, Any]:
        """NAT type and special behaviour, the fields `netsh interface teredo show state` shows."""
        special = self._nat_special()
        return {"nat_type": self.qualifier.nat_type, "upnp": special["upnp"],
                "port_preserving": special["port_preserving"], "sequential": special["sequential"],
                "hairpinning": special["hairpinning"]}

    def _nat_special(self) -> dict[str, Any]:
        """What Windows calls "NAT Special Behaviour", in one place for status and metrics."""
        upnp = None if self.upnp is None else self.upnp.status()
        mapping = f"{upnp['external_address']}:{upnp['external_port']}" if upnp and upnp["mapped"] else None
        behaviour = self.qualifier.behaviour
        return {
            "upnp": mapping is not None,
            "upnp_mapping": mapping,
            "port_preserving": behaviour.port_preserving,
            "sequential": behaviour.sequential,
            "symmetric_nat_support": self.config.extensions.symmetric_nat,
            "hairpinning": self.local.hairpinning_used,  # RFC 6081 §5.6
            "local_peers": len(self.local.peers),  # RFC 4380 §5.2.8 discovery and hairpinning
            # RFC 6081 §5.7: indirect bubbles our server-load reduction saved (None: extension off)
            "indirect_bubbles_saved": None if self.data.load is None else self.data.load.saved,
        }

    @property
    def qualified(self) -> bool:
        """Whether the client holds a Teredo address right now."""
        return self.qualifier.qualification is not None

    def peers(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self.data.table.snapshot(self._seconds(), limit)

    def peer_count(self) -> int:
        return len(self.data.table)
