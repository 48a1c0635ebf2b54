"""The server's C fast path (accel.rsfast) on its two batched UDP ports.

Each port's recvmmsg receiver is replaced by an `_rsfast.Pump`: it reads a batch, answers
every canonical qualification RS itself (RFC 4380 §5.3.2, decided by the machine's
`fast_path`, a twin of ServerMachine's byte-compare branch with the same rate-limit table)
and gives the port only the other datagrams, which ServerMachine.handle() judges as before.
The pump's counts land in the role's counters under the names the Python path uses.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from typing import Any

from teredo_appliance import accel
from teredo_appliance.roles.server_machine import ANSWERED_RS, ServerMachine
from teredo_appliance.roles.udp import BatchedPort, Datagram
from teredo_appliance.stats import DROP, UDP_IN, UDP_OUT, Counters

RATE_LIMITED = DROP + "rs-rate-limited"


class AnsweringReceiver:
    """A BatchReceiver over one pump: what the C code answered is counted, the rest returned."""

    read = 0

    def __init__(self, pump: Any, counters: Counters, seconds: Callable[[], float]) -> None:
        self._pump = pump
        self._counters = counters
        self._seconds = seconds

    def receive(self) -> list[Datagram]:
        pump = self._pump
        slow: list[Datagram] = pump.receive(self._seconds())
        self.read = pump.read
        answered, rate_limited, bytes_in, bytes_out, refused = pump.take_counts()
        if self.read:
            counters = self._counters
            counters[ANSWERED_RS] += answered
            counters[UDP_IN] += bytes_in
            counters[UDP_OUT] += bytes_out
            if rate_limited:
                counters[RATE_LIMITED] += rate_limited
            for code, count in refused.items():
                counters[DROP + "send-" + errno.errorcode.get(code, "error").lower()] += count
        return slow

    def close(self) -> None:
        self._pump = None  # its buffers go with it; the port closes the socket


def answer_in_c(machine: ServerMachine, ports: Sequence[Any], counters: Counters,
                seconds: Callable[[], float]) -> bool:
    """Put a pump on the primary and secondary ports (in that order) if both are batched and
    the C fast path is built; whether it was done."""
    fast_path = machine.fast_path
    if fast_path is None or accel.rsfast is None or len(ports) != 2:
        return False
    if not all(isinstance(port, BatchedPort) and port.receiver is not None for port in ports):
        return False
    descriptors = tuple(port.socket.fileno() for port in ports)
    for which, port in enumerate(ports):
        port.receiver.close()
        port.receiver = AnsweringReceiver(accel.rsfast.Pump(fast_path, descriptors[which], which, descriptors),
                                          counters, seconds)
    return True
