"""The one exception `wire/` raises for bad bytes; its short reason names a drop counter."""


class ParseError(ValueError):
    """A datagram or packet that cannot be what it claims; `reason` is a counter-friendly slug."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
