"""The UDP glue every role shares: bind without DF, send without raising, contain bad packets.

A full socket buffer or a hostile datagram must cost a counted drop, never a
traceback per packet or a dead role.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.protocol import DatagramProtocol

from teredo_appliance.guard import PacketGuard
from teredo_appliance.stats import UDP_IN, UDP_OUT, Counters

IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DONT = getattr(socket, "IP_PMTUDISC_DONT", 0)  # RFC 4380 §5.1.2 / Miredo: never set DF
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # absorb bursts: a relay or server is a packet pump

Deliver = Callable[[bytes, tuple[str, int]], None]


class TeredoUDP(DatagramProtocol):
    """Hands each datagram to `deliver(data, (host, port))` and sends with `send()`.

    Sends go straight to the socket: Twisted's `Port.write` re-parses the destination
    text three times per datagram to reject host names, about a third of a server's
    Python time under load, and every address a role sends to is a numeric literal.
    """

    noisy = False  # each role service logs its own start and stop line

    def __init__(self, deliver: Deliver, counters: Counters, label: str = "udp") -> None:
        self.deliver = deliver
        self.counters = counters
        self.label = label
        self._guard = PacketGuard(counters, label)
        self._sendto: Callable[[bytes, tuple[str, int]], Any] | None = None

    def startProtocol(self) -> None:
        sock = getattr(self.transport, "socket", None)
        if sock is None:  # an in-memory transport in unit tests
            self._sendto = self.transport.write
            return
        self._sendto = sock.sendto
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            # Capped by net.core.[rw]mem_max; the kernel default still works.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.counters[UDP_IN] += len(data)
        try:
            self.deliver(data, addr)
        except Exception:
            self._guard.failed()

    def stopProtocol(self) -> None:
        self._sendto = None

    def send(self, payload: bytes, addr: tuple[str, int]) -> bool:
        """Send one datagram; a full buffer or unreachable network is a counted drop."""
        if self._sendto is None:
            self.counters.drop("socket-closed")
            return False
        try:
            self._sendto(payload, addr)
        except OSError as error:
            self.counters.drop("send-" + errno.errorcode.get(error.errno or 0, "error").lower())
            return False
        self.counters[UDP_OUT] += len(payload)
        return True


def listen_udp(reactor: Any, protocol: TeredoUDP, address: str, port: int) -> Any:
    """Bind `protocol` on address:port (port 0: the kernel picks) and return the IListeningPort."""
    return reactor.listenUDP(port, protocol, interface=address, maxPacketSize=65535)
