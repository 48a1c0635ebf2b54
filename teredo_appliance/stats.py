"""Named event counters shared by every role: cheap to bump on the hot path, easy to report."""

from __future__ import annotations

from collections import Counter

DROP = "drop."
BYTES = "bytes."
# Byte counters of the two sides every role has (UDP) or may have (TUN); one add per packet.
UDP_IN, UDP_OUT = BYTES + "udp_in", BYTES + "udp_out"
TUN_IN, TUN_OUT = BYTES + "tun_in", BYTES + "tun_out"


class Counters(Counter):
    """A Counter of event names; `drop(reason)` keeps drop reasons under one namespace."""

    def drop(self, reason: str) -> None:
        self[DROP + reason] += 1

    def drops(self) -> dict[str, int]:
        return {k[len(DROP):]: v for k, v in sorted(self.items()) if k.startswith(DROP)}

    def traffic(self) -> dict[str, int]:
        """Bytes by direction (udp_in, udp_out, tun_in, tun_out); only directions seen so far."""
        return {k[len(BYTES):]: v for k, v in sorted(self.items()) if k.startswith(BYTES)}

    def events(self) -> dict[str, int]:
        """Everything counted that is neither a drop nor a byte count."""
        return {k: v for k, v in sorted(self.items()) if not k.startswith((DROP, BYTES))}
