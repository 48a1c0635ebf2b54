"""RFC 6081 §5.2 Symmetric NAT Support: bubbles carry a Nonce trailer (§4.2) that lets a
peer follow the mapping a symmetric NAT really gave us, and lets us follow a peer's.

Behind a symmetric (port-symmetric) NAT, the mapping in our Teredo address is the one our
server sees; a peer sees our packets come from another port. So (sender side) while we are
behind such a NAT, every direct and indirect bubble to a peer carries one nonce per peer.
The indirect copy reaches the peer through its server, the one path it already believes
(RFC 4380 §5.2.3); the direct copy, once the peer's NAT lets it in, arrives from the mapping
our NAT chose, with the same nonce.

Receiver side (always on while the extension is): a bubble relayed by our server records
its source's nonce; a direct bubble from that source at another mapping than its address
embeds is believed only with that same nonce, and the peer is then reached at that mapping.
Whether the direct copy gets in at all is the peer NAT's choice: RFC 6081 §3.1 reaches
cone and address-restricted NATs, never port-restricted or symmetric ones.

Pure (fed `now`); bounded: at most MAX_NONCES remembered either way, each for NONCE_LIFETIME.
"""

from __future__ import annotations

import random
from collections import OrderedDict

from teredo_appliance.wire.errors import ParseError
from teredo_appliance.wire.trailers import NONCE_LENGTH, NonceTrailer, parse_trailers

MAX_NONCES = 1024  # peers in the middle of a bubble exchange; a flood only pushes the oldest out
NONCE_LIFETIME = 30.0  # RFC 4380 §5.2.6: a peer gets bubbles for about this long before we give up


class SymmetricNat:
    """The nonces we send (per peer) and the ones our server relayed to us (per source)."""

    def __init__(self, rng: random.Random, *, max_nonces: int = MAX_NONCES, lifetime: float = NONCE_LIFETIME) -> None:
        self._rng = rng
        self._max = max_nonces
        self._lifetime = lifetime
        self.sending = False  # we qualified behind a symmetric NAT: our bubbles carry a nonce
        self._ours: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()  # peer -> (nonce, since)
        self._theirs: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()  # source -> (nonce, heard)

    def reset(self, sending: bool) -> None:
        """A new qualification: nonces belonged to the old address."""
        self.sending = sending
        self._ours.clear()
        self._theirs.clear()

    def trailer_for(self, peer: bytes, now: float) -> bytes:
        """The Nonce trailer for a bubble to `peer` (the same until it goes stale); b"" when
        we are not behind a symmetric NAT (nothing for a peer to follow)."""
        if not self.sending:
            return b""
        entry = self._ours.get(peer)
        if entry is None or now - entry[1] > self._lifetime:
            entry = (self._rng.getrandbits(8 * NONCE_LENGTH).to_bytes(NONCE_LENGTH, "big"), now)
            self._remember(self._ours, peer, entry)
        return NonceTrailer(entry[0]).pack()

    def heard_relayed(self, source: bytes, trailer: bytes, now: float) -> None:
        """A bubble from `source` that our server relayed: remember the nonce it carries."""
        nonce = _nonce(trailer)
        if nonce is not None:
            self._remember(self._theirs, source, (nonce, now))

    def vouches(self, source: bytes, trailer: bytes, now: float) -> bool:
        """True when a direct bubble from `source` (at a mapping its address does not embed)
        carries the nonce our server relayed from it, recently."""
        entry = self._theirs.get(source)
        if entry is None or now - entry[1] > self._lifetime:
            return False
        nonce = _nonce(trailer)
        return nonce is not None and nonce == entry[0]

    def _remember(self, table: OrderedDict[bytes, tuple[bytes, float]], key: bytes, entry: tuple[bytes, float]) -> None:
        table[key] = entry
        table.move_to_end(key)
        while len(table) > self._max:
            table.popitem(last=False)

    def stats(self) -> dict[str, int]:
        return {"symmetric_nonces_sent": len(self._ours), "symmetric_nonces_heard": len(self._theirs)}


def _nonce(trailer: bytes) -> bytes | None:
    """The first Nonce trailer's value; None without one, or when the trailers are malformed
    (the hairpinning code counts those)."""
    if not trailer:
        return None
    try:
        found = parse_trailers(trailer)
    except ParseError:
        return None
    return next((option.nonce for option in found if isinstance(option, NonceTrailer)), None)
