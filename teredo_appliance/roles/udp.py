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

from twisted.internet import udp
from twisted.internet.protocol import DatagramProtocol

from teredo_appliance import mmsg
from teredo_appliance.guard import PacketGuard
from teredo_appliance.stats import UDP_IN, UDP_OUT, Counters

IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DONT = getattr(socket, "IP_PMTUDISC_DONT", 0)  # RFC 4380 §5.1.2 / Miredo: never set DF
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # absorb bursts: a relay or server is a packet pump

BATCHES_PER_WAKEUP = 4  # then other sockets get their turn, as Twisted's maxThroughput does

Deliver = Callable[[bytes, tuple[str, int]], None]
DeliverBatch = Callable[[list[mmsg.Datagram]], None]


class TeredoUDP(DatagramProtocol):
    """Hands each datagram to `deliver(data, (host, port))` and sends with `send()`.

    Sends go straight to the socket: Twisted's `Port.write` re-parses the destination
    text three times per datagram to reject host names, about a third of a server's
    Python time under load, and every address a role sends to is a numeric literal.
    """

    noisy = False  # each role service logs its own start and stop line

    def __init__(
        self, deliver: Deliver, counters: Counters, label: str = "udp", deliver_batch: DeliverBatch | None = None
    ) -> None:
        """`deliver_batch`, when given, takes whole batches from a `BatchedPort` (it must
        contain per-datagram errors itself, as `guarded` helps it to)."""
        self.deliver = deliver
        self.deliver_batch = deliver_batch
        self.counters = counters
        self.label = label
        self._guard = PacketGuard(counters, label)
        self._sendto: Callable[[bytes, tuple[str, int]], Any] | None = None
        self._batch: mmsg.BatchSocket | None = None

    def startProtocol(self) -> None:
        sock = getattr(self.transport, "socket", None)
        if sock is None:  # an in-memory transport in unit tests
            self._sendto = self.transport.write
            return
        self._sendto = sock.sendto
        if isinstance(self.transport, BatchedPort):
            self._batch = self.transport.batch
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

    def batchReceived(self, batch: list[mmsg.Datagram]) -> None:
        """Datagrams from one recvmmsg call: to `deliver_batch`, or one by one to `deliver`."""
        self.counters[UDP_IN] += sum(len(data) for data, _, _ in batch)
        if self.deliver_batch is not None:
            self.deliver_batch(batch)
            return
        for data, ip, port in batch:
            try:
                self.deliver(data, (socket.inet_ntoa(ip.to_bytes(4, "big")), port))
            except Exception:
                self._guard.failed()

    def guarded(self) -> PacketGuard:
        """The guard a batch handler reports a per-datagram failure to."""
        return self._guard

    def stopProtocol(self) -> None:
        self._sendto = None
        self._batch = None

    def send_batch(self, datagrams: list[mmsg.Datagram]) -> set[int]:
        """Send (payload, IPv4 int, port) datagrams, batched when the port can; the indices
        refused are counted as drops (as `send` would) and returned."""
        if self._batch is None:
            return {
                i for i, (data, ip, port) in enumerate(datagrams)
                if not self.send(data, (socket.inet_ntoa(ip.to_bytes(4, "big")), port))
            }
        failed = self._batch.send(datagrams)
        for _, code in failed:
            self.counters.drop("send-" + errno.errorcode.get(code, "error").lower())
        refused = {i for i, _ in failed}
        self.counters[UDP_OUT] += sum(len(data) for i, (data, _, _) in enumerate(datagrams) if i not in refused)
        return refused

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


class BatchedPort(udp.Port):
    """A Twisted UDP port that reads with recvmmsg and hands its protocol whole batches."""

    batch: mmsg.BatchSocket

    def _bindSocket(self) -> None:
        super()._bindSocket()
        self.batch = mmsg.BatchSocket(self.socket.fileno())

    def doRead(self) -> None:
        protocol = self.protocol
        for _ in range(BATCHES_PER_WAKEUP):
            try:
                batch = self.batch.recv()
            except OSError as error:  # e.g. ECONNREFUSED from an earlier send's ICMP error
                protocol.counters.drop("recv-" + errno.errorcode.get(error.errno or 0, "error").lower())
                continue
            if batch:
                protocol.batchReceived(batch)
            if len(batch) < self.batch.batch:
                return


def adopt_udp(reactor: Any, protocol: TeredoUDP, fd: int, *, batched: bool = False) -> Any:
    """Serve `protocol` on the bound UDP socket `fd` (inherited from a privileged parent)."""
    if batched and mmsg.available():
        listening = BatchedPort._fromListeningDescriptor(reactor, fd, socket.AF_INET, protocol, 65535)
        listening.startListening()
        return listening
    return reactor.adoptDatagramPort(fd, socket.AF_INET, protocol, maxPacketSize=65535)


def listen_udp(reactor: Any, protocol: TeredoUDP, address: str, port: int, *, batched: bool = False) -> Any:
    """Bind `protocol` on address:port (port 0: the kernel picks) and return the IListeningPort;
    `batched` reads and writes with recvmmsg/sendmmsg where the platform has them."""
    if batched and mmsg.available() and hasattr(reactor, "addReader"):
        listening = BatchedPort(port, protocol, interface=address, maxPacketSize=65535, reactor=reactor)
        listening.startListening()
        return listening
    return reactor.listenUDP(port, protocol, interface=address, maxPacketSize=65535)
