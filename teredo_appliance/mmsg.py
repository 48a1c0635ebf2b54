"""recvmmsg(2)/sendmmsg(2) on an IPv4 UDP socket through ctypes: up to 64 datagrams per syscall.

A server answers one datagram with one datagram, so with recvfrom/sendto it pays two
system calls per RS, most of its CPU time. These calls move a whole batch each. Only
the standard library is used (no compiler at install time); `available()` is False
where libc lacks the calls, and the roles then keep Twisted's plain path.

Buffers are allocated once per socket. The receive slots are as large as any UDP
payload (so nothing is ever truncated and every datagram gets the verdict the plain
path would give it) but live in an anonymous mapping: only the pages datagrams really
touch cost memory.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket
import struct
import sys

BATCH = 64  # datagrams per system call
SLOT = 65536  # > 65507, the largest IPv4 UDP payload (RFC 768 length field minus headers)
MSG_DONTWAIT = 0x40
_SOCKADDR_IN = 16
_AF_INET_BE = int.from_bytes(struct.pack("=H", socket.AF_INET), "big")  # sin_family in host order


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_IOVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


_MMSG_SIZE = ctypes.sizeof(_MMsgHdr)
_LEN_OFFSET = _MMsgHdr.len.offset
_LENGTH = struct.Struct("I")  # msg_len, host order
_SOURCE = struct.Struct("!HI")  # sin_port, sin_addr


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.recvmmsg.restype = libc.sendmmsg.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def available() -> bool:
    """Whether this platform's libc has recvmmsg and sendmmsg."""
    return _LIBC is not None


class _Messages:
    """`count` message headers, header i pointing at iovec i and sockaddr slot i."""

    def __init__(self, count: int) -> None:
        self.msgs = (_MMsgHdr * count)()
        self.iov = (_IOVec * count)()
        self.names = ctypes.create_string_buffer(count * _SOCKADDR_IN)
        names = ctypes.addressof(self.names)
        for i in range(count):
            header = self.msgs[i].hdr
            header.name = names + i * _SOCKADDR_IN
            header.namelen = _SOCKADDR_IN
            header.iov = ctypes.pointer(self.iov[i])
            header.iovlen = 1
        self.view = memoryview(self.msgs).cast("B")
        self.names_view = memoryview(self.names).cast("B")


Datagram = tuple[bytes, int, int]  # payload, IPv4 address as an int, port


class BatchSocket:
    """Batched receive and send on the non-blocking IPv4 UDP socket `fd` (not owned: never closed here)."""

    def __init__(self, fd: int, batch: int = BATCH) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg are not available")
        self.fd = fd
        self.batch = batch
        self._recv = _Messages(batch)
        self._area = mmap.mmap(-1, batch * SLOT)
        self._area_view = memoryview(self._area)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._area))
        for i in range(batch):
            self._recv.iov[i].base = base + i * SLOT
            self._recv.iov[i].len = SLOT
        self._recv_pristine = bytes(self._recv.view)  # the kernel rewrites namelen and flags
        self._send = _Messages(batch)
        self._lengths = struct.Struct(f"{batch}I")
        self._structs: dict[int, tuple[struct.Struct, struct.Struct]] = {}

    def recv(self) -> list[Datagram]:
        """Up to `batch` waiting datagrams ([] when none); raises OSError on other errors."""
        recv = self._recv
        recv.view[:] = self._recv_pristine
        n = _LIBC.recvmmsg(self.fd, recv.msgs, self.batch, MSG_DONTWAIT, None)  # type: ignore[union-attr]
        if n < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                return []
            raise OSError(code, "recvmmsg: " + errno.errorcode.get(code, "error"))
        view, names, area = recv.view, recv.names_view, self._area_view
        length_of, source_of = _LENGTH.unpack_from, _SOURCE.unpack_from
        out = []
        for i in range(n):
            (length,) = length_of(view, i * _MMSG_SIZE + _LEN_OFFSET)
            port, ip = source_of(names, i * _SOCKADDR_IN + 2)
            out.append((area[i * SLOT : i * SLOT + length].tobytes(), ip, port))
        return out

    def _packers(self, n: int) -> tuple[struct.Struct, struct.Struct]:
        packers = self._structs.get(n)
        if packers is None:
            packers = self._structs[n] = (struct.Struct("@" + "PN" * n), struct.Struct("!" + "HHI8x" * n))
        return packers

    def send(self, datagrams: list[Datagram]) -> list[tuple[int, int]]:
        """Send every datagram, `batch` per call; returns (index, errno) of those the kernel refused."""
        failed: list[tuple[int, int]] = []
        for start in range(0, len(datagrams), self.batch):
            chunk = datagrams[start : start + self.batch]
            failed += [(start + i, code) for i, code in self._send_chunk(chunk)]
        return failed

    def _send_chunk(self, chunk: list[Datagram]) -> list[tuple[int, int]]:
        blob = b"".join([data for data, _, _ in chunk])
        base = ctypes.cast(ctypes.c_char_p(blob), ctypes.c_void_p).value or 0
        iovecs, offset, addresses = [], 0, []
        for data, ip, port in chunk:
            iovecs += (base + offset, len(data))
            offset += len(data)
            addresses += (_AF_INET_BE, port, ip)
        send = self._send
        iov_packer, name_packer = self._packers(len(chunk))
        iov_packer.pack_into(memoryview(send.iov).cast("B"), 0, *iovecs)
        name_packer.pack_into(send.names_view, 0, *addresses)
        failed = []
        done = 0
        while done < len(chunk):
            pointer = ctypes.byref(send.msgs, done * _MMSG_SIZE)
            n = _LIBC.sendmmsg(self.fd, pointer, len(chunk) - done, MSG_DONTWAIT)  # type: ignore[union-attr]
            if n <= 0:  # the datagram at `done` was refused: count it, go on with the rest
                failed.append((done, ctypes.get_errno() if n < 0 else errno.EAGAIN))
                done += 1
            else:
                done += n
        del blob  # kept alive until every sendmmsg that points into it has returned
        return failed
