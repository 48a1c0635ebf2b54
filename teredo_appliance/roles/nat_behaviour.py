"""What the two qualification mappings tell about the NAT's port allocation (RFC 6081 §5.4, §5.5).

Windows reports it as "NAT Special Behaviour": a port-preserving NAT keeps the client's
local port for its first mapping (RFC 6081 §5.4), so a peer can predict it; a sequential
port-symmetric NAT hands out the next mapping a small step after the previous one
(RFC 6081 §5.5), so a peer can aim at the next port. The two mappings are the ones the
server's primary and secondary addresses saw, in that order, during qualification.
Pure: the qualifier calls `classify` with the ports it learned.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQUENTIAL_MAX_STEP = 16  # the largest step between consecutive mappings still read as "sequential"


@dataclass(frozen=True)
class NatBehaviour:
    port_preserving: bool | None  # None: not known (no local port, or no mapping yet)
    sequential: bool | None
    step: int | None  # for a sequential NAT: how far apart its consecutive mappings are

    def report(self) -> dict[str, object]:
        return {"port_preserving": self.port_preserving, "sequential": self.sequential, "sequential_step": self.step}


UNKNOWN = NatBehaviour(None, None, None)


def classify(local_port: int | None, primary_port: int, secondary_port: int) -> NatBehaviour:
    """The NAT's special behaviour from our local UDP port and the two mapped ports, in the order sent."""
    preserving = None if local_port is None else primary_port == local_port
    step = (secondary_port - primary_port) & 0xFFFF
    sequential = 0 < step <= SEQUENTIAL_MAX_STEP
    return NatBehaviour(preserving, sequential, step if sequential else None)


def describe(special: dict[str, object]) -> str:
    """One line in the spirit of netsh's "NAT Special Behaviour": UPnP with its external
    mapping, port-preserving, sequential, hairpinning used, local peers, indirect bubbles
    the server load reduction saved (None: not known, or that extension off)."""

    def word(value: object) -> str:
        return "unknown" if value is None else "yes" if value is True else "no" if value is False else str(value)

    upnp = f"yes ({special['upnp_mapping']})" if special.get("upnp_mapping") else word(special.get("upnp"))
    saved = "off" if special.get("indirect_bubbles_saved") is None else special["indirect_bubbles_saved"]
    return (f"UPnP: {upnp}, PortPreserving: {word(special.get('port_preserving'))}, "
            f"Sequential: {word(special.get('sequential'))}, Hairpinning used: {word(special.get('hairpinning'))}, "
            f"Local peers: {word(special.get('local_peers'))}, Indirect bubbles saved: {saved}")
