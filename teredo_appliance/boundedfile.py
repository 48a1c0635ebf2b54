"""Read a small file that an operator may have swapped for something else, without blocking.

The daemon re-reads its configuration and the console's authorized_keys in the reactor
thread (SIGHUP, `reload()`): a path that is now a FIFO must not stall the reactor, and
/dev/zero or a runaway file must not fill memory. So the file is opened with O_NONBLOCK,
the open descriptor is fstat'ed (no race with a rename), anything but a regular file is
refused, and at most `limit` + 1 bytes are ever read.
"""

from __future__ import annotations

import os
import stat

MAX_FILE_BYTES = 1 << 20  # 1 MiB: far above any real teredo.yaml or authorized_keys

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class FileRefused(Exception):
    """The path opened but is no regular file of acceptable size; the message says why."""


def describe_kind(mode: int) -> str:
    """'a FIFO', 'a directory', ...: what a non-regular file is, for error messages."""
    return next((name for test, name in _KINDS if test(mode)), "not a plain file")


def read_bounded(path: str, limit: int = MAX_FILE_BYTES) -> tuple[bytes, os.stat_result]:
    """The whole content of the regular file at `path` (at most `limit` bytes) and its status.

    Raises OSError when the path cannot be opened, FileRefused when it is not a regular
    file or is larger than `limit`. Never blocks on a FIFO or a device.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"{describe_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise FileRefused(f"too large ({info.st_size} bytes; the limit is {limit})")
        chunks, size = [], 0
        while size <= limit:  # the file may grow while we read: never take more than limit + 1
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileRefused(f"too large (more than {limit} bytes)")
        return b"".join(chunks), info
    finally:
        os.close(fd)
