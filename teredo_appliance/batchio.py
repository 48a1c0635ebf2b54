"""Batched UDP I/O: up to 64 IPv4 datagrams per system call (recvmmsg, sendmmsg, UDP GSO).

Python pays a system call and a few objects per datagram on a plain socket; a Teredo
relay, client or server is a packet pump, so that cost is most of its CPU (a server
answering one RS with one RA pays two calls per datagram with recvfrom/sendto). recvmmsg(2)
and sendmmsg(2) move a whole batch per call, and a run of equal-sized datagrams to one
destination leaves as one UDP_SEGMENT send that the kernel cuts up late (UDP GSO).
They are reached through ctypes and the socket module (stdlib), so the wheel needs no
compiler; where libc lacks them `available()` says so and callers keep the plain path.
Only IPv4 sockets (Teredo's) are handled.

The API, shared by every role::

    receiver = Receiver(sock.fileno())
    for data, (host, port) in receiver.receive():   # [] when the socket is empty
        ...
    sender = Sender(sock.fileno())                  # segment=False: no UDP GSO
    errors = sender.send([(payload, (host, port)), ...])  # [(index, errno), ...] refused ones

Buffers are anonymous mmaps allocated once: the kernel hands out their pages only as
datagrams touch them, so 64 slots of 64 KiB cost a few pages for Teredo's 1280-byte
packets while a datagram of any size is still received whole, as on the plain path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import socket
import struct
from collections.abc import Sequence

BATCH = 64  # datagrams per system call
# UDP GSO (Linux 4.18+, include/uapi/linux/udp.h): one send of up to 64 equal datagrams.
SOL_UDP = 17
UDP_SEGMENT = 103
GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS in older kernels
GSO_BYTES = 65507  # one send carries at most the largest IPv4 UDP payload
GSO_MAX_SEGMENT = 1472  # a segment must fit the device MTU (1500 less IPv4 and UDP headers)
# Errors that mean "not this way" rather than "not to there": the path's MTU is smaller,
# the device cannot checksum, or the kernel lacks UDP GSO; the datagrams go one by one.
GSO_UNSUPPORTED = frozenset({errno.EINVAL, errno.EIO, errno.EMSGSIZE, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
_GSO_SIZE = struct.Struct("=H")
SLOT = 65536  # bytes per datagram slot: the largest UDP payload fits, nothing is truncated
MSG_DONTWAIT = 0x40  # include/linux/socket.h

Address = tuple[str, int]
Datagram = tuple[bytes, Address]  # payload and its source or destination


class _SockaddrIn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_uint16), ("addr", ctypes.c_uint32),
                ("zero", ctypes.c_char * 8)]


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_Iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


SOCKADDR_SIZE = ctypes.sizeof(_SockaddrIn)
MMSGHDR_SIZE = ctypes.sizeof(_Mmsghdr)
IOVEC_SIZE = ctypes.sizeof(_Iovec)
LEN_OFFSET = _Mmsghdr.len.offset
IOV_LEN_OFFSET = _Iovec.len.offset
_SIZE = struct.Struct("N")  # size_t, native
_SOCKADDR = struct.Struct("=H2s4s8x")  # family (host order), port and address (network order)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        calls = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg, sendmmsg = calls
    recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    recvmmsg.restype = sendmmsg.restype = ctypes.c_int
    return libc


_LIBC = _libc()


def available() -> bool:
    """Whether batched I/O works here (libc has recvmmsg and sendmmsg)."""
    return _LIBC is not None


def _address(buffer: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


class _Slots:
    """BATCH message headers, each with one iovec over its SLOT bytes and one sockaddr_in."""

    def __init__(self) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg not available")
        self.data = mmap.mmap(-1, BATCH * SLOT)
        self.names = (_SockaddrIn * BATCH)()
        self.iovecs = (_Iovec * BATCH)()
        self.headers = (_Mmsghdr * BATCH)()
        base = _address(self.data)
        for i in range(BATCH):
            self.iovecs[i].base = base + i * SLOT
            self.iovecs[i].len = SLOT
            header = self.headers[i].hdr
            header.name = ctypes.addressof(self.names[i])
            header.namelen = SOCKADDR_SIZE
            header.iov = ctypes.pointer(self.iovecs[i])
            header.iovlen = 1
        self.header_view = memoryview(self.headers).cast("B")
        # Every header's msg_len, as one strided view: read all of a batch's sizes at once.
        self.sizes = self.header_view.cast("I")[LEN_OFFSET // 4::MMSGHDR_SIZE // 4]
        self.name_view = memoryview(self.names).cast("B")
        self.iovec_view = memoryview(self.iovecs).cast("B")
        self.headers_address = ctypes.addressof(self.headers)

    def close(self) -> None:
        for view in (self.sizes, self.header_view, self.name_view, self.iovec_view):
            view.release()
        self.data.close()


class Receiver:
    """recvmmsg on a non-blocking IPv4 UDP socket `fileno`."""

    read = 0  # datagrams the last receive() read: BATCH means more may be waiting

    def __init__(self, fileno: int) -> None:
        self.fileno = fileno
        self._slots = _Slots()

    def receive(self) -> list[tuple[bytes, Address]]:
        """Up to BATCH waiting datagrams with their sources; [] if none is waiting.

        Raises OSError for any other error (ECONNREFUSED after an ICMP error, as recvfrom).
        """
        slots = self._slots
        assert _LIBC is not None
        count = _LIBC.recvmmsg(self.fileno, slots.headers_address, BATCH, MSG_DONTWAIT, None)
        self.read = max(count, 0)
        if count < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return []
            raise OSError(code, errno.errorcode.get(code, "error"))
        data = slots.data
        sizes = slots.sizes[:count].tolist()
        names = bytes(slots.name_view[:count * SOCKADDR_SIZE])
        sources: dict[bytes, Address] = {}  # one flow sends many datagrams per batch
        received = []
        start = at = 0
        for size in sizes:
            raw = names[at + 2:at + 8]
            source = sources.get(raw)
            if source is None:
                source = sources[raw] = (socket.inet_ntoa(raw[2:]), raw[0] << 8 | raw[1])
            received.append((data[start:start + size], source))
            start += SLOT
            at += SOCKADDR_SIZE
        return received

    def close(self) -> None:
        self._slots.close()


class Sender:
    """sendmmsg on a non-blocking IPv4 UDP socket `fileno`; with `segment`, a run of
    datagrams to one destination of one size (the last may be shorter) leaves as one
    UDP_SEGMENT send that the kernel cuts up (UDP GSO), where the kernel offers it."""

    def __init__(self, fileno: int, *, segment: bool = True) -> None:
        self.fileno = fileno
        self._slots = _Slots()
        self._packed: dict[Address, bytes] = {}
        self._socket = socket.socket(fileno=os.dup(fileno))  # for sendmsg with a control message
        self.segment = segment
        self.segmented = 0  # UDP GSO sends made (each carrying 2 to GSO_SEGMENTS datagrams)

    def send(self, datagrams: Sequence[tuple[bytes, Address]]) -> list[tuple[int, int]]:
        """Send every datagram in order, many per system call; return (index, errno) of each
        one the kernel refused (the plain path's sendto would have raised for those).

        A payload larger than a slot goes alone through sendto, which gives the same error.
        """
        errors: list[tuple[int, int]] = []
        start = plain = 0
        total = len(datagrams)
        while start < total:
            end = self._run_end(datagrams, start) if self.segment else start + 1
            if end - start < 2:
                start += 1
                continue
            while plain < start:  # everything before the run, in order
                plain = self._send_batch(datagrams, plain, start, errors)
            self._send_segmented(datagrams, start, end, errors)
            start = plain = end
        while plain < total:
            plain = self._send_batch(datagrams, plain, total, errors)
        return sorted(errors)

    @staticmethod
    def _run_end(datagrams: Sequence[tuple[bytes, Address]], start: int) -> int:
        """The end of the UDP GSO run starting at `start` (start + 1: no run)."""
        first, destination = datagrams[start]
        size = len(first)
        if not 0 < size <= GSO_MAX_SEGMENT:
            return start + 1
        total, end, limit = size, start + 1, min(len(datagrams), start + GSO_SEGMENTS)
        while end < limit:
            payload, to = datagrams[end]
            length = len(payload)
            if to != destination or not 0 < length <= size or total + length > GSO_BYTES:
                break
            total += length
            end += 1
            if length < size:  # only the last segment may be shorter
                break
        return end

    def _send_segmented(self, datagrams: Sequence[tuple[bytes, Address]], start: int, end: int,
                        errors: list[tuple[int, int]]) -> None:
        first, destination = datagrams[start]
        control = [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(len(first)))]
        try:
            self._socket.sendmsg([b"".join(payload for payload, _ in datagrams[start:end])], control, 0,
                                 destination)
        except OSError as error:
            if error.errno not in GSO_UNSUPPORTED:  # the destination's verdict: each datagram's
                errors.extend((index, error.errno or errno.EIO) for index in range(start, end))
                return
            if error.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                self.segment = False  # this kernel has no UDP GSO: never try again
            index = start
            while index < end:  # the path cannot take it as one: send one by one
                index = self._send_batch(datagrams, index, end, errors)
            return
        self.segmented += 1

    def _send_batch(self, datagrams: Sequence[tuple[bytes, Address]], start: int, total: int,
                    errors: list[tuple[int, int]]) -> int:
        slots = self._slots
        data, iovecs, names = slots.data, slots.iovec_view, slots.name_view
        count = 0
        index = start
        while index < total and count < BATCH:
            payload, destination = datagrams[index]
            size = len(payload)
            if size > SLOT:
                break
            try:
                packed = self._pack(destination)
            except (OSError, ValueError, TypeError, OverflowError):
                errors.append((index, errno.EINVAL))  # sendto refuses it too (gaierror/EINVAL)
                index += 1
                if count:
                    break
                start = index
                continue
            offset = count * SLOT
            data[offset:offset + size] = payload
            _SIZE.pack_into(iovecs, count * IOVEC_SIZE + IOV_LEN_OFFSET, size)
            names[count * SOCKADDR_SIZE:(count + 1) * SOCKADDR_SIZE] = packed
            count += 1
            index += 1
        if count == 0:
            if index < total:  # an oversized payload: let sendto say why
                self._send_one(datagrams[index], index, errors)
                return index + 1
            return index
        sent = 0
        assert _LIBC is not None
        while sent < count:
            done = _LIBC.sendmmsg(self.fileno, slots.headers_address + sent * MMSGHDR_SIZE, count - sent, 0)
            if done < 0:
                code = ctypes.get_errno()
                if code == errno.EINTR:
                    continue
                errors.append((start + sent, code))  # this datagram failed; the rest still go
                sent += 1
            else:
                sent += done
        return index

    def _send_one(self, datagram: tuple[bytes, Address], index: int, errors: list[tuple[int, int]]) -> None:
        payload, destination = datagram
        with socket.socket(fileno=self.fileno) as sock:
            try:
                sock.sendto(payload, destination)
            except OSError as error:
                errors.append((index, error.errno or errno.EIO))
            finally:
                sock.detach()

    def _pack(self, destination: Address) -> bytes:
        packed = self._packed.get(destination)
        if packed is None:
            host, port = destination
            packed = _SOCKADDR.pack(socket.AF_INET, port.to_bytes(2, "big"), socket.inet_aton(host))
            if len(self._packed) >= BATCH * 16:  # bounded: peers come and go
                self._packed.clear()
            self._packed[destination] = packed
        return packed

    def close(self) -> None:
        self._slots.close()
        self._socket.close()
