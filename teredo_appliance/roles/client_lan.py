"""The client's LAN edge for local discovery (RFC 4380 §5.2.8): the multicast socket, the
multicast options of the Teredo socket, and the subnets that count as on-link.

Discovery bubbles go out of the client's own UDP socket (their source port must be the
Teredo service port) on the LAN interface, TTL 1, without looping back to us. They come
in on a second socket bound to 224.0.0.253:3544 that has joined the group on that
interface only (IP_MULTICAST_ALL off: no group joined by another socket leaks in).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyroute2 import IPRoute

from teredo_appliance.roles.client_local import DISCOVERY_PORT, DISCOVERY_TTL
from teredo_appliance.roles.udp import TeredoUDP
from teredo_appliance.stats import Counters
from teredo_appliance.wire.constants import DISCOVERY_ADDRESS

IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)  # Linux <linux/in.h>


def connected_networks(local_ip: str) -> list[IPv4Network]:
    """The IPv4 subnets of the interface that holds `local_ip` (empty if none does)."""
    with IPRoute() as ipr:
        addresses = [
            (message["index"], IPv4Network((message.get_attr("IFA_ADDRESS"), message["prefixlen"]), strict=False))
            for message in ipr.get_addr(family=socket.AF_INET)
        ]
    wanted = IPv4Address(local_ip)
    indexes = {index for index, network in addresses if wanted in network}
    return [network for index, network in addresses if index in indexes]


def set_multicast_sender(sock: Any, local_ip: str) -> None:
    """Make `sock` send multicast out of the interface of `local_ip`, TTL 1, no loopback."""
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local_ip))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, DISCOVERY_TTL)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)


class LanEdge:
    """The discovery socket on 224.0.0.253:3544 (a member of the group on one interface at a
    time) and the multicast options of the Teredo socket."""

    def __init__(self, reactor: Any, deliver: Callable[[bytes, tuple[str, int]], None], counters: Counters) -> None:
        self.reactor = reactor
        self.protocol = TeredoUDP(deliver, counters, "discovery")
        self._port: Any = None
        self.joined: str | None = None  # the local address whose interface is in the group

    def attach(self, sender: Any, local_ip: str) -> list[IPv4Network]:
        """Send from `sender` and listen on `local_ip`'s interface; its subnets. OSError if not."""
        if sender is not None:
            set_multicast_sender(sender, local_ip)
        if self._port is None:
            self._port = self.reactor.listenMulticast(
                DISCOVERY_PORT, self.protocol, interface=DISCOVERY_ADDRESS, maxPacketSize=65535, listenMultiple=True
            )
            self._port.socket.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        if self.joined != local_ip:
            self.detach()
            self._port.socket.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _membership(local_ip))
            self.joined = local_ip
        return connected_networks(local_ip)

    def detach(self) -> None:
        """Leave the group (offline); the socket stays for the next qualification."""
        if self.joined is None or self._port is None:
            return
        joined, self.joined = self.joined, None
        with contextlib.suppress(OSError):  # the interface went away, and its membership with it
            self._port.socket.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, _membership(joined))

    def stop(self) -> Any:
        """Close the socket; returns stopListening's Deferred (or None)."""
        self.detach()
        port, self._port = self._port, None
        return None if port is None else port.stopListening()


def _membership(local_ip: str) -> bytes:
    return struct.pack("4s4s", socket.inet_aton(DISCOVERY_ADDRESS), socket.inet_aton(local_ip))
