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
from typing import Any, Protocol

from twisted.internet import udp
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol

from teredo_appliance import batchio
from teredo_appliance.guard import PacketGuard
from teredo_appliance.stats import UDP_IN, UDP_OUT, Counters

IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DONT = getattr(socket, "IP_PMTUDISC_DONT", 0)  # RFC 4380 §5.1.2 / Miredo: never set DF
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # absorb bursts: a relay or server is a packet pump

BATCHES_PER_WAKEUP = 4  # then other sockets get their turn, as Twisted's maxThroughput does

Address = batchio.Address
Datagram = batchio.Datagram
Deliver = Callable[[bytes, Address], None]
DeliverBatch = Callable[[list[Datagram]], None]


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
        self._sendto: Callable[[bytes, Address], Any] | None = None
        self._sender: batchio.Sender | None = None
        self._held: list[Datagram] | None = None  # sends waiting for release()

    def startProtocol(self) -> None:
        sock = getattr(self.transport, "socket", None)
        if sock is None:  # an in-memory transport in unit tests
            self._sendto = self.transport.write
            return
        self._sendto = sock.sendto
        if isinstance(self.transport, BatchedPort):
            self._sender = self.transport.sender
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

    def batchReceived(self, batch: list[Datagram]) -> None:
        """Datagrams from one recvmmsg call: to `deliver_batch`, or one by one to `deliver`."""
        if self.deliver_batch is None:
            for data, addr in batch:
                self.datagramReceived(data, addr)
            return
        self.counters[UDP_IN] += sum(len(data) for data, _ in batch)
        self.deliver_batch(batch)

    def guarded(self) -> PacketGuard:
        """The guard a batch handler reports a per-datagram failure to."""
        return self._guard

    def stopProtocol(self) -> None:
        self.release()
        self._sendto = None
        self._sender = None  # the port closes it

    def hold(self) -> None:
        """Keep the following sends until release(), to send them in batches (if batched)."""
        if self._sender is not None and self._held is None:
            self._held = []

    def release(self) -> None:
        """Send what was held, many datagrams per system call; refused ones are counted
        drops exactly as send() counts them."""
        held, self._held = self._held, None
        if held:
            self.send_batch(held)

    def send_batch(self, datagrams: list[Datagram]) -> set[int]:
        """Send datagrams in order, batched when the port can (after any held ones); the
        indices refused are counted as drops (as `send` would) and returned."""
        sender = self._sender
        if sender is None:
            return {i for i, (data, addr) in enumerate(datagrams) if not self.send(data, addr)}
        self.release()
        counters = self.counters
        segmented = sender.segmented
        failed = sender.send(datagrams)
        if sender.segmented != segmented:
            counters["udp.gso_sends"] += sender.segmented - segmented
        for _, code in failed:
            counters.drop("send-" + errno.errorcode.get(code, "error").lower())
        refused = {i for i, _ in failed}
        counters[UDP_OUT] += sum(len(data) for data, _ in datagrams) - sum(len(datagrams[i][0]) for i in refused)
        return refused

    def send_all(self, payloads: list[bytes], addr: Address) -> None:
        """Send payloads to one address in order (a super-packet's segments): while held they
        join the batch at once, where equal sizes make one UDP GSO send of them."""
        held = self._held
        if held is None:
            for payload in payloads:
                self.send(payload, addr)
            return
        held.extend([(payload, addr) for payload in payloads])
        if len(held) >= batchio.BATCH:
            self.release()
            self.hold()

    def send(self, payload: bytes, addr: Address) -> bool:
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


class BatchReceiver(Protocol):
    """What a BatchedPort reads with: batchio.Receiver, or a receiver that answers some
    datagrams itself and returns only the others (the server's C fast path)."""

    read: int  # datagrams the last receive() took from the socket

    def receive(self) -> list[Datagram]: ...

    def close(self) -> None: ...


class BatchedPort(udp.Port):
    """A Twisted UDP port that reads with recvmmsg, hands its TeredoUDP whole batches and
    holds the protocol's sends while it does, so they leave batched (sendmmsg, UDP GSO)."""

    receiver: BatchReceiver | None = None
    sender: batchio.Sender | None = None

    def _bindSocket(self) -> None:
        super()._bindSocket()  # also takes an inherited socket (_fromListeningDescriptor)
        fileno = self.socket.fileno()
        self.receiver = batchio.Receiver(fileno)
        self.sender = batchio.Sender(fileno)

    def doRead(self) -> None:
        protocol, receiver = self.protocol, self.receiver
        assert receiver is not None
        protocol.hold()
        try:
            for _ in range(BATCHES_PER_WAKEUP):
                try:
                    batch = receiver.receive()
                except OSError as error:  # e.g. ECONNREFUSED from an earlier send's ICMP error
                    protocol.counters.drop("recv-" + errno.errorcode.get(error.errno or 0, "error").lower())
                    continue
                if batch:
                    protocol.counters["udp.batches"] += 1
                    protocol.batchReceived(batch)  # contained: TeredoUDP never raises
                if receiver.read < batchio.BATCH:  # the socket is empty now
                    return
        finally:
            protocol.release()

    def connectionLost(self, reason: Any = None) -> None:
        # Before Port's own: it fires stopListening's Deferred, and the Sender's duplicate
        # descriptor would keep the address bound for whoever rebinds it then (a reload).
        self.protocol.release()
        for closing in (self.receiver, self.sender):
            if closing is not None:
                closing.close()
        self.receiver = self.sender = None
        super().connectionLost(reason)


def _batchable(reactor: Any) -> bool:
    """Batched ports need batchio and a real reactor (unit tests' memory reactors get plain ones)."""
    return batchio.available() and isinstance(reactor, PosixReactorBase)


def adopt_udp(reactor: Any, protocol: TeredoUDP, fd: int, *, batched: bool = False) -> Any:
    """Serve `protocol` on the bound IPv4 UDP socket `fd` (inherited from a privileged parent)."""
    if batched and _batchable(reactor):
        listening = BatchedPort._fromListeningDescriptor(reactor, fd, socket.AF_INET, protocol, 65535)
        listening.startListening()
        return listening
    return reactor.adoptDatagramPort(fd, socket.AF_INET, protocol, maxPacketSize=65535)


def listen_udp(reactor: Any, protocol: TeredoUDP, address: str, port: int, *, batched: bool = False) -> Any:
    """Bind `protocol` on address:port (port 0: the kernel picks) and return the IListeningPort.

    `batched`: read and send in batches (BatchedPort) where batchio works, on a real
    reactor with an IPv4 address (batchio's); otherwise the plain port.
    """
    if batched and _batchable(reactor) and ":" not in address:
        listening = BatchedPort(port, protocol, interface=address, maxPacketSize=65535, reactor=reactor)
        listening.startListening()
        return listening
    return reactor.listenUDP(port, protocol, interface=address, maxPacketSize=65535)
