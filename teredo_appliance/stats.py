"""Named event counters shared by every role: cheap to bump on the hot path, easy to report."""

from __future__ import annotations

from collections import Counter


class Counters(Counter):
    """A Counter of event names; `drop(reason)` keeps drop reasons under one namespace."""

    def drop(self, reason: str) -> None:
        self["drop." + reason] += 1

    def drops(self) -> dict[str, int]:
        return {k[5:]: v for k, v in sorted(self.items()) if k.startswith("drop.")}

    def events(self) -> dict[str, int]:
        """Everything counted that is not a drop."""
        return {k: v for k, v in sorted(self.items()) if not k.startswith("drop.")}
