"""Notice when the host's IPv4 addresses or default route change (Miredo never did).

A Teredo mapping belongs to a source address and a path: after a new DHCP lease, a Wi-Fi
roam or a new default gateway, the old mapping is dead and waiting for the next refresh
(up to 30 s, then 12 s of retries) is needless downtime. One rtnetlink socket subscribed
to IPv4 address and route notifications sits in the reactor as a reader; bursts (an
address and its routes arrive together) are coalesced into one call after DEBOUNCE.

Only the notification headers are parsed, with struct: it is a read-only, no-request
socket, so a library's request machinery would add nothing.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

# include/uapi/linux/rtnetlink.h
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RT_TABLE_MAIN = 254
RT_SCOPE_HOST = 254  # 127.0.0.1 and friends: never a path to a Teredo server
NLMSG_HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index

DEBOUNCE = 0.5  # seconds: one re-qualification per burst of notifications
RECEIVE_SIZE = 65536


def is_relevant(data: bytes) -> bool:
    """Whether a batch of rtnetlink messages holds a change a Teredo client must act on:
    an IPv4 address (other than host-scope) added or removed, or a main-table IPv4 default
    route added or removed."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size or offset + length > len(data):
            return False
        body = offset + NLMSG_HEADER.size
        if kind in (RTM_NEWADDR, RTM_DELADDR) and length >= NLMSG_HEADER.size + IFADDRMSG.size:
            family, _plen, _aflags, scope, _index = IFADDRMSG.unpack_from(data, body)
            if family == socket.AF_INET and scope != RT_SCOPE_HOST:
                return True
        elif kind in (RTM_NEWROUTE, RTM_DELROUTE) and length >= NLMSG_HEADER.size + RTMSG.size:
            family, dst_len, _src, _tos, table = RTMSG.unpack_from(data, body)[:5]
            if family == socket.AF_INET and dst_len == 0 and table == RT_TABLE_MAIN:
                return True
        offset += (length + 3) & ~3  # NLMSG_ALIGN
    return False


@implementer(IReadDescriptor)
class NetWatch:
    """Calls `on_change()` (at most once per DEBOUNCE) after relevant rtnetlink notifications."""

    log = Logger()

    def __init__(self, on_change: Callable[[], None], reactor: Any) -> None:
        self.on_change = on_change
        self.reactor = reactor
        self._socket: socket.socket | None = None
        self._pending: Any = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
        try:
            sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self.reactor.addReader(self)

    def stop(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        sock, self._socket = self._socket, None
        if sock is not None:
            self.reactor.removeReader(self)
            sock.close()

    # IReadDescriptor
    def fileno(self) -> int:
        return -1 if self._socket is None else self._socket.fileno()

    def logPrefix(self) -> str:
        return "netwatch"

    def connectionLost(self, reason: Any) -> None:
        self.stop()

    def doRead(self) -> None:
        sock = self._socket
        relevant = False
        while sock is not None:
            try:
                data = sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                break
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise
                relevant = True  # the kernel dropped notifications: assume we missed a change
                continue
            relevant = relevant or is_relevant(data)
        if relevant and self._pending is None:
            self._pending = self.reactor.callLater(DEBOUNCE, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.on_change()
