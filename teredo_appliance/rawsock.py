"""A send-only raw IPv6 socket: how a Teredo server emits packets toward native IPv6.

The packets keep their Teredo source address, which is not ours, so they cannot go out
of an ordinary socket: an IPPROTO_RAW socket takes the whole IPv6 header as given
(Linux implies IPV6_HDRINCL for it) and the kernel routes by its destination.
IPPROTO_RAW sockets receive nothing, so the reactor never needs to read this one; and
a packet the kernel refuses is a counted drop, never an exception in the packet path.
"""

from __future__ import annotations

import errno
import socket

from teredo_appliance.stats import Counters


class RawIPv6Sender:
    """Open with `open()` (needs CAP_NET_RAW: do it before dropping privileges)."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self._socket: socket.socket | None = None

    def open(self) -> None:
        """Create the socket; raises OSError (EPERM without CAP_NET_RAW) for the caller to report."""
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        sock.setblocking(False)  # a full queue costs a drop, never a stalled reactor
        self._socket = sock

    def adopt(self, fd: int) -> None:
        """Use a raw socket opened by a privileged parent (a server worker inherits it)."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        self._socket = sock

    @property
    def is_open(self) -> bool:
        return self._socket is not None

    def send(self, packet: bytes, destination: str) -> bool:
        """Send a complete IPv6 packet to `destination` (its own destination, as text)."""
        sock = self._socket
        if sock is None:
            self.counters.drop("socket-closed")
            return False
        try:
            sock.sendto(packet, (destination, 0))
        except OSError as error:
            self.counters.drop("raw-send-" + errno.errorcode.get(error.errno or 0, "error").lower())
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
