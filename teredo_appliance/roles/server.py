"""The server role as a Twisted service: two UDP ports and a raw IPv6 socket around ServerMachine.

All decisions live in `server_machine`; this module only owns the sockets, turns the
reactor's (host, port) into the machine's ints and sends what the machine returns.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Interface, IPv6Network
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed

from teredo_appliance.config_model import ServerConfig
from teredo_appliance.netlink import Link, LinkError
from teredo_appliance.rawsock import RawIPv6Sender
from teredo_appliance.roles.anycast import Announcer
from teredo_appliance.roles.base import RoleService
from teredo_appliance.roles.server_fastpath import answer_in_c
from teredo_appliance.roles.server_machine import ANSWERED_RS, PRIMARY, RAW, SECONDARY, ServerMachine
from teredo_appliance.roles.udp import Datagram, TeredoUDP, adopt_udp, listen_udp
from teredo_appliance.stats import Counters
from teredo_appliance.tunnel import Tunnel
from teredo_appliance.wire.address import is_global_ipv4
from teredo_appliance.wire.constants import TEREDO_PORT

ANYCAST_STRAY_PACKET = "anycast.tun_packet"  # the anycast TUN carries no traffic: whatever comes is dropped


class AnycastAddresses:
    """The server's two addresses as /32s on a TUN device of its own, which the routing daemon
    announces (its `direct` protocol on that device).

    The device carries no traffic (packets to a local address never enter it); it is only a home
    for the addresses that the kernel deletes with the process, as it deletes the relay's TUN
    and route: a server killed outright is withdrawn at once, not announced while nothing serves.
    """

    def __init__(self, config: ServerConfig, counters: Counters, *, reactor: Any,
                 tun_system: Any, link_factory: Callable[[str], Link]) -> None:
        self.addresses = [IPv4Interface((config.bind_address, 32)), IPv4Interface((config.bind_address2, 32))]
        self.tunnel = Tunnel(config.anycast_interface, config.mtu, lambda _: counters.drop(ANYCAST_STRAY_PACKET),
                             counters=counters, reactor=reactor, system=tun_system, link_factory=link_factory)

    def open(self) -> None:
        """Privileged: create the device (link up, no address yet)."""
        self.tunnel.open()

    def add(self) -> None:
        if not self.tunnel.is_open:
            raise LinkError(f"{self.tunnel.name}: cannot add the anycast addresses: the server is stopped")
        self.tunnel.set_addresses(self.addresses)

    def remove(self) -> None:
        self.tunnel.set_addresses([])

    @property
    def installed(self) -> bool:
        return bool(self.tunnel.addresses)

    def close(self) -> Deferred[None]:
        """Remove the addresses and the device; fires once the device is gone (a restart
        creates it anew). Without CAP_NET_ADMIN closing alone removes both."""
        return self.tunnel.close()


class ServerService(RoleService):
    """A stateless Teredo server (RFC 4380 §5.3) on `bind_address` and `bind_address2`.

    With `anycast`, the service creates its anycast TUN and puts both addresses on it before
    binding, and removes them on drain and stop, so a routing daemon announces them only while
    this box serves them (and not after the process died: the kernel deletes the device).
    """

    role = "server"

    def __init__(
        self,
        config: ServerConfig,
        reactor: Any = None,
        *,
        port: int = TEREDO_PORT,
        reachable_ipv4: Callable[[int], bool] = is_global_ipv4,
        link_factory: Callable[[str], Link] = Link,
        tun_system: Any = None,
        batched: bool = True,
        inherited: tuple[int, int, int] | None = None,
    ) -> None:
        """`port` and `reachable_ipv4` exist for tests on loopback; the protocol fixes 3544.
        `link_factory` configures the anycast TUN and `tun_system` opens it (tests pass fakes).
        `batched`: recvmmsg/sendmmsg where available (False: one syscall per datagram).
        `inherited`: descriptors of the bound primary and secondary UDP sockets and the raw
        IPv6 socket, opened by the appliance for a worker process (server_workers)."""
        super().__init__(config, reactor)
        self.anycast = AnycastAddresses(config, self.counters, reactor=self.reactor, tun_system=tun_system,
                                        link_factory=link_factory)
        self.announcer = Announcer(
            f"anycast {config.bind_address}/32 and {config.bind_address2}/32 on {config.anycast_interface}",
            add=self.anycast.add, remove=self.anycast.remove,
            installed=lambda: self.anycast.installed, clock=self.reactor,
        )
        self.port = port
        self.batched = batched
        self.inherited = inherited
        self.machine = ServerMachine(
            int(config.bind_address),
            int(config.bind_address2),
            self.counters,
            prefix32=config.prefix.network_address.packed[:4],
            mtu=config.mtu,
            port=port,
            reachable_ipv4=reachable_ipv4,
            rs_rate=config.rs_rate,
            rs_burst=config.rs_burst,
        )
        self.raw = RawIPv6Sender(self.counters)
        self.protocols: dict[str, TeredoUDP] = {}
        for which in (PRIMARY, SECONDARY):
            self.protocols[which] = TeredoUDP(
                self._receiver(which), self.counters, "server-" + which, self._batch_receiver(which)
            )
        self._ports: list[Any] = []
        self.fast_path = False  # whether the C fast path answers the canonical RSs (server_fastpath)
        self._failed_release: Deferred[Any] = succeed(None)  # a failed start's port closing
        self.prefix64 = str(IPv6Network((self.machine.prefix64, 64)))  # what every RA advertises

    def _receiver(self, which: str) -> Callable[[bytes, tuple[str, int]], None]:
        """The per-socket datagram handler, with everything it needs bound once."""
        handle = self.machine.handle
        protocols = self.protocols
        raw_send = self.raw.send
        counters = self.counters
        seconds = self.reactor.seconds
        aton = socket.inet_aton
        from_bytes = int.from_bytes

        def receive(data: bytes, source: tuple[str, int]) -> None:
            output = handle(data, from_bytes(aton(source[0]), "big"), source[1], which, seconds())
            if output is not None:
                key, payload, destination, sent = output
                if key == RAW:
                    ok = raw_send(payload, destination[0])  # type: ignore[index]
                else:
                    ok = protocols[key].send(payload, destination or source)
                if ok:  # a refused send was counted as a drop by the sender
                    counters[sent] += 1

        return receive

    def _batch_receiver(self, which: str) -> Callable[[list[Datagram]], None]:
        """The batched twin of `_receiver`: the same machine verdict per datagram, the
        answers gathered per socket and sent with one sendmmsg each at the end."""
        handle = self.machine.handle
        protocols = self.protocols
        raw_send = self.raw.send
        counters = self.counters
        seconds = self.reactor.seconds
        aton = socket.inet_aton
        from_bytes = int.from_bytes

        def receive(batch: list[Datagram]) -> None:
            now = seconds()
            guard = protocols[which].guarded()
            outgoing: dict[str, tuple[list[Datagram], list[str]]] = {PRIMARY: ([], []), SECONDARY: ([], [])}
            for data, source in batch:
                try:
                    output = handle(data, from_bytes(aton(source[0]), "big"), source[1], which, now)
                    if output is None:
                        continue
                    key, payload, destination, sent = output
                    if key == RAW:
                        if raw_send(payload, destination[0]):  # type: ignore[index]
                            counters[sent] += 1
                        continue
                    datagrams, events = outgoing[key]
                    datagrams.append((payload, destination or source))
                    events.append(sent)
                except Exception:
                    guard.failed()
            for key, (datagrams, events) in outgoing.items():
                if datagrams:
                    refused = protocols[key].send_batch(datagrams)
                    for i, event in enumerate(events):
                        if i not in refused:
                            counters[event] += 1

        return receive

    def privilegedStartService(self) -> None:
        """Bind both UDP ports and open the raw socket while still root; all or nothing."""
        if self.inherited is not None:
            self.raw.adopt(self.inherited[2])
            for which, fd in zip((PRIMARY, SECONDARY), self.inherited[:2], strict=True):
                self._ports.append(adopt_udp(self.reactor, self.protocols[which], fd, batched=self.batched))
            self._answer_in_c()
            super().privilegedStartService()
            return
        try:
            if self.config.anycast:
                self.anycast.open()
                if self.announcer.state.wanted:  # a restart after a drain (a reload) stays drained
                    self.anycast.add()
            self.raw.open()
            for which, address in ((PRIMARY, self.config.bind_address), (SECONDARY, self.config.bind_address2)):
                self._ports.append(
                    listen_udp(self.reactor, self.protocols[which], str(address), self.port, batched=self.batched)
                )
        except Exception:
            self._failed_release = self._release()  # stopService waits for it: a reload may rebind
            raise
        self._answer_in_c()
        super().privilegedStartService()

    def _answer_in_c(self) -> None:
        self.fast_path = answer_in_c(self.machine, self._ports, self.counters, self.reactor.seconds)

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "Teredo server on {primary}:{port} and {secondary}:{port}, prefix {prefix}, MTU {mtu}"
            " ({path} qualification path)",
            primary=str(self.config.bind_address),
            secondary=str(self.config.bind_address2),
            port=self.port,
            prefix=self.prefix64,
            mtu=self.config.mtu,
            path="C" if self.fast_path else "Python",
        )

    def stopService(self) -> Deferred[None]:
        """Close everything; the Deferred fires once both UDP ports are unbound (a reload rebinds)."""
        super().stopService()
        closing = DeferredList([self._release(), self._failed_release], consumeErrors=True)

        def stopped(_: object) -> None:
            self.log.info("Teredo server stopped after answering {answered} RS", answered=self.counters[ANSWERED_RS])

        return closing.addCallback(stopped)

    def _release(self) -> Deferred[Any]:
        ports, self._ports = self._ports, []
        self.raw.close()
        closing = [maybeDeferred(port.stopListening) for port in ports]
        return DeferredList([*closing, self.anycast.close()], consumeErrors=True)

    def status(self) -> dict[str, Any]:
        report = super().status()
        report.update(
            {
                "addresses": {
                    "primary": f"{self.config.bind_address}:{self.port}",
                    "secondary": f"{self.config.bind_address2}:{self.port}",
                    "raw_ipv6": self.raw.is_open,
                },
                "prefix": self.prefix64,
                "mtu": self.config.mtu,
                "fast_path": self.fast_path,
            }
        )
        if self.config.anycast:
            report["anycast"] = self.announcer.status()
        return report

    # -- drain (teredoctl drain server, the console's drain(), SIGTERM) ---------------------

    def drain(self, grace: float) -> Deferred[dict[str, Any]]:
        """Remove the anycast addresses now (nothing to withdraw without `anycast`); fires
        with the anycast status once `grace` seconds are over."""
        if not self.config.anycast:
            return succeed({"state": "not anycast", "announced": False})
        return self.announcer.drain(grace)

    def undrain(self) -> dict[str, Any]:
        if not self.config.anycast:
            return {"state": "not anycast", "announced": False}
        problem = self.announcer.undrain()
        if problem is not None:
            self.log.error("{problem}", problem=problem)
        return self.announcer.status()
