"""systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram per message.

A service of Type=notify finds an AF_UNIX datagram socket in $NOTIFY_SOCKET and sends it
newline-separated KEY=VALUE lines. A path starting with '@' names a socket in the
abstract namespace (the '@' stands for a leading NUL byte). Outside systemd the variable
is unset and every message is a no-op. A failed send is reported to the caller as False,
never raised: the appliance must keep serving even if systemd cannot be told about it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, MutableMapping

NOTIFY_SOCKET = "NOTIFY_SOCKET"


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: what systemd (>= 253) wants beside RELOADING=1."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def one_line(text: str) -> str:
    """A STATUS= value: newlines would end the field, so they become '; '."""
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


class Notifier:
    """Sends sd_notify messages to `address` (None: to nobody)."""

    def __init__(self, address: str | None, clock: Callable[[], int] = monotonic_usec) -> None:
        self.address = address or None
        self._clock = clock

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for; the variable is removed so that child processes
        (the client's hook scripts) cannot speak for the appliance."""
        env = os.environ if environ is None else environ
        return cls(env.pop(NOTIFY_SOCKET, None))

    def send(self, **fields: str | int) -> bool:
        """One message of KEY=VALUE lines; True if it was handed to systemd."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, target)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=one_line(status))

    def reloading(self, status: str = "reloading the configuration") -> bool:
        return self.send(RELOADING=1, MONOTONIC_USEC=self._clock(), STATUS=one_line(status))

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING=1, STATUS=one_line(status))
