"""The UDP glue every role shares: bind without DF, send without raising, contain bad packets.

A full socket buffer or a hostile datagram must cost a counted drop, never a
traceback per packet or a dead role. A port bound with `batched=True` reads up to
`batchio.BATCH` datagrams per system call, and sends made while its protocol is held
(during a read batch, or a TUN batch: see `hold`) leave in one sendmmsg at the end.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import udp
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol

from teredo_appliance import batchio
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
        self._sender: batchio.Sender | None = None
        self._held: list[tuple[bytes, tuple[str, int]]] | None = None  # sends waiting for release()

    def startProtocol(self) -> None:
        sock = getattr(self.transport, "socket", None)
        if sock is None:  # an in-memory transport in unit tests
            self._sendto = self.transport.write
            return
        self._sendto = sock.sendto
        if isinstance(self.transport, BatchedPort):
            self._sender = batchio.Sender(sock.fileno())
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
        self.release()
        self._sendto = None
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.close()

    def hold(self) -> None:
        """Keep the following sends until release(), to send them in batches (if batched)."""
        if self._sender is not None and self._held is None:
            self._held = []

    def release(self) -> None:
        """Send what was held, BATCH datagrams per system call; refused ones are counted drops
        exactly as send() counts them."""
        held, self._held = self._held, None
        if not held or self._sender is None:
            return
        counters = self.counters
        sender = self._sender
        segmented = sender.segmented
        failed = dict(sender.send(held))
        if sender.segmented != segmented:
            counters["udp.gso_sends"] += sender.segmented - segmented
        for code in failed.values():
            counters.drop("send-" + errno.errorcode.get(code, "error").lower())
        counters[UDP_OUT] += sum(len(payload) for payload, _ in held) - sum(len(held[i][0]) for i in failed)

    def send(self, payload: bytes, addr: tuple[str, int]) -> bool:
        """Send one datagram; a full buffer or unreachable network is a counted drop.

        While held, the datagram is queued and True only means accepted for sending.
        """
        held = self._held
        if held is not None:
            held.append((payload, addr))
            if len(held) >= batchio.BATCH:
                self.release()
                self.hold()
            return True
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
    """A UDP port that reads with recvmmsg and holds its TeredoUDP's sends while it delivers."""

    _receiver: batchio.Receiver | None = None

    def startListening(self) -> None:
        super().startListening()
        self._receiver = batchio.Receiver(self.socket.fileno())

    def doRead(self) -> None:
        """Like udp.Port.doRead (up to maxThroughput bytes per wake-up), a batch per call."""
        protocol, receiver = self.protocol, self._receiver
        assert receiver is not None
        protocol.hold()
        try:
            read = 0
            while read < self.maxThroughput:
                try:
                    batch = receiver.receive()
                except OSError:  # ECONNREFUSED after an ICMP error: nothing to read, as Port does
                    return
                if not batch:
                    return
                protocol.counters["udp.batches"] += 1
                for data, addr in batch:
                    read += len(data)
                    protocol.datagramReceived(data, addr)  # contained: TeredoUDP never raises
        finally:
            protocol.release()

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.close()


def listen_udp(reactor: Any, protocol: TeredoUDP, address: str, port: int, *, batched: bool = False) -> Any:
    """Bind `protocol` on address:port (port 0: the kernel picks) and return the IListeningPort.

    `batched`: read and send in batches (BatchedPort) where batchio works on a real
    reactor with an IPv4 address; otherwise, and in unit tests' memory reactors, the plain port.
    """
    if batched and batchio.available() and isinstance(reactor, PosixReactorBase) and ":" not in address:
        listening = BatchedPort(port, protocol, interface=address, maxPacketSize=65535, reactor=reactor)
        listening.startListening()
        return listening
    return reactor.listenUDP(port, protocol, interface=address, maxPacketSize=65535)
