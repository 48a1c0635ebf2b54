"""Notice changes to the network the roles depend on, from rtnetlink notifications.

Two watches share one reader (`NetWatch`), differing in the groups they join and the
messages they act on:

- the client's uplink (`is_relevant`, the default; Miredo never did this): a Teredo
  mapping belongs to a source address and a path, so after a new DHCP lease, a Wi-Fi roam
  or a new default gateway, waiting for the next refresh (up to 30 s, then 12 s of
  retries) is needless downtime;
- a role's own TUN device (`tun_watch`): deleted, set down, or stripped of an IPv6
  address or route by another program, it is noticed at once and repaired;
- the relay also re-reads the routing table on any IPv6 route change (`ipv6_route_change`):
  its native side is healthy only while a route leads toward what it serves.

One rtnetlink socket per watch sits in the reactor as a reader; bursts (an address and
its routes arrive together) are coalesced into one call after DEBOUNCE. Only the
notification headers are parsed, with struct: it is a read-only, no-request socket, so a
library's request machinery would add nothing.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

# include/uapi/linux/rtnetlink.h
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTA_OIF = 4  # route attribute: output interface index
UPLINK_GROUPS = RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
TUN_GROUPS = RTMGRP_LINK | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
RT_TABLE_MAIN = 254
RT_SCOPE_HOST = 254  # 127.0.0.1 and friends: never a path to a Teredo server
NLMSG_HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
RTATTR = struct.Struct("=HH")  # length, type

DEBOUNCE = 0.5  # seconds: one re-qualification per burst of notifications
RECEIVE_SIZE = 65536


def _messages(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(type, body offset, end) of each whole message in a batch; stops at a malformed one."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind = NLMSG_HEADER.unpack_from(data, offset)[:2]
        if length < NLMSG_HEADER.size or offset + length > len(data):
            return
        yield kind, offset + NLMSG_HEADER.size, offset + length
        offset += (length + 3) & ~3  # NLMSG_ALIGN


def _route_oif(data: bytes, offset: int, end: int) -> int | None:
    """The RTA_OIF attribute of a route message whose attributes start at `offset`."""
    while offset + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size or offset + length > end:
            return None
        if kind == RTA_OIF and length >= RTATTR.size + 4:
            return int(struct.unpack_from("=i", data, offset + RTATTR.size)[0])
        offset += (length + 3) & ~3  # RTA_ALIGN
    return None


def tun_watch(ifindex: Callable[[], int | None]) -> Callable[[bytes], bool]:
    """A predicate for NetWatch: the batch touches the device `ifindex()` names (its link
    changed or went away, or it lost an IPv6 address or route). Our own repairs trigger it
    too; the check that follows finds nothing to do."""

    def touches_tun(data: bytes) -> bool:
        index = ifindex()
        for kind, body, end in _messages(data):
            size = end - body
            if kind in (RTM_NEWLINK, RTM_DELLINK) and size >= IFINFOMSG.size:
                where = IFINFOMSG.unpack_from(data, body)[2]
            elif kind == RTM_DELADDR and size >= IFADDRMSG.size and data[body] == socket.AF_INET6:
                where = IFADDRMSG.unpack_from(data, body)[4]
            elif kind == RTM_DELROUTE and size >= RTMSG.size and data[body] == socket.AF_INET6:
                where = _route_oif(data, body + RTMSG.size, end)
            else:
                continue
            if where == index:
                return True
        return False

    return touches_tun


def ipv6_route_change(data: bytes) -> bool:
    """Whether a batch adds or removes any IPv6 route (e.g. an uplink's, on link down)."""
    return any(kind in (RTM_NEWROUTE, RTM_DELROUTE) and end - body >= RTMSG.size and data[body] == socket.AF_INET6
               for kind, body, end in _messages(data))


def either(*predicates: Callable[[bytes], bool]) -> Callable[[bytes], bool]:
    """A predicate for NetWatch that holds when any of `predicates` does."""
    return lambda data: any(relevant(data) for relevant in predicates)


def is_relevant(data: bytes) -> bool:
    """Whether a batch of rtnetlink messages holds a change a Teredo client must act on:
    an IPv4 address (other than host-scope) added or removed, or a main-table IPv4 default
    route added or removed."""
    for kind, body, end in _messages(data):
        if kind in (RTM_NEWADDR, RTM_DELADDR) and end - body >= IFADDRMSG.size:
            family, _plen, _aflags, scope, _index = IFADDRMSG.unpack_from(data, body)
            if family == socket.AF_INET and scope != RT_SCOPE_HOST:
                return True
        elif kind in (RTM_NEWROUTE, RTM_DELROUTE) and end - body >= RTMSG.size:
            family, dst_len, _src, _tos, table = RTMSG.unpack_from(data, body)[:5]
            if family == socket.AF_INET and dst_len == 0 and table == RT_TABLE_MAIN:
                return True
    return False


@implementer(IReadDescriptor)
class NetWatch:
    """Calls `on_change()` (at most once per DEBOUNCE) after rtnetlink notifications of
    `groups` for which `relevant(batch)` holds; by default, the client's uplink watch."""

    log = Logger()

    def __init__(
        self, on_change: Callable[[], None], reactor: Any, *, groups: int = UPLINK_GROUPS,
        relevant: Callable[[bytes], bool] = is_relevant,
    ) -> None:
        self.on_change = on_change
        self.reactor = reactor
        self.groups = groups
        self.relevant = relevant
        self._socket: socket.socket | None = None
        self._pending: Any = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
        try:
            sock.bind((0, self.groups))
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
            relevant = relevant or self.relevant(data)
        if relevant and self._pending is None:
            self._pending = self.reactor.callLater(DEBOUNCE, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.on_change()
