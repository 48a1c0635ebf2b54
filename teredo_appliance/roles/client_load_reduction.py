"""RFC 6081 §5.7 Server Load Reduction: fewer indirect bubbles through a peer's server once
the two clients know they can reach each other directly.

RFC 4380 §5.2.4 makes every discovery send a bubble through the peer's server, even to a
peer we talked to seconds before its entry expired (30 s without reception). With this
extension, as we read it (the text of RFC 6081 §5.7 and of MS-TERE could not be reached
when this was written, so this is the extension's published summary made concrete; see
wire/trailers.py for what was verified):

- our discovery bubbles carry an ND Option trailer (§4.4) with TeredoDiscoverySolicitation;
- a bubble carrying one, from a peer at the mapping its address embeds (or relayed by our
  server), is answered with a direct bubble carrying TeredoDiscoveryAdvertisement;
- a peer whose advertisement reached us directly, from the mapping its address embeds,
  is remembered with that mapping for `KNOWN_LIFETIME`;
- when such a peer is to be discovered again, the first round is the direct bubble alone:
  its answer trusts the peer as before and the indirect bubble is saved. If the round goes
  unanswered, the following rounds are the usual direct and indirect pair (the fallback)
  and the peer is forgotten.

An RFC 4380 peer such as Miredo ignores the trailer and never advertises, so it is never
remembered and gets the usual pair at every round, exactly as before. A round is one
bubble slot of the peer's RFC 4380 §5.2.6 pacing either way, so a peer never gets more
bubbles than before, and a direct-only round sends one instead of two.

Pure (fed `now`); bounded: at most `MAX_KNOWN` peers remembered, oldest forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict

from teredo_appliance.peers import Mapping
from teredo_appliance.wire.trailers import (
    ND_ADVERTISEMENT,
    ND_SOLICITATION,
    NeighborDiscoveryTrailer,
    Trailer,
)

MAX_KNOWN = 1024  # a client talks to few peers; a flood of advertisers only pushes the oldest out
# How long after its advertisement (or its last answered rediscovery) a peer is worth a
# direct-only round: RFC 4787 REQ-5 says a NAT keeps a UDP mapping at least two minutes
# after the last packet. Some keep less (Linux conntrack: 30 s for a flow that ended within
# 2 s of its start); the round then goes unanswered and the fallback costs one retry (2 s).
KNOWN_LIFETIME = 120.0

SOLICITATION = NeighborDiscoveryTrailer(ND_SOLICITATION).pack()
ADVERTISEMENT = NeighborDiscoveryTrailer(ND_ADVERTISEMENT).pack()


class ServerLoadReduction:
    """The peers that advertised the extension to us, and the direct-only rounds under way."""

    def __init__(self, *, max_known: int = MAX_KNOWN, lifetime: float = KNOWN_LIFETIME) -> None:
        self._max = max_known
        self._lifetime = lifetime
        # peer -> (mapping it advertised from, when, whether a direct-only round is under way)
        self._known: OrderedDict[bytes, tuple[Mapping, float, bool]] = OrderedDict()
        self.saved = 0  # indirect bubbles not sent: direct-only rounds that were answered
        self.fallbacks = 0  # direct-only rounds unanswered, followed by the usual pair

    def reset(self) -> None:
        """A new Teredo address: what peers knew of the old one is no guide."""
        self._known.clear()

    def direct_only(self, peer: bytes, mapping: Mapping, now: float) -> bool:
        """Whether this round of discovery towards `peer` at `mapping` may leave out the
        indirect bubble. A second round after a direct-only one is the fallback: False."""
        entry = self._known.get(peer)
        if entry is None:
            return False
        known_at, heard, under_way = entry
        if under_way:
            del self._known[peer]
            self.fallbacks += 1
            return False
        if known_at != mapping or now - heard > self._lifetime:
            del self._known[peer]
            return False
        self._known[peer] = (known_at, heard, True)
        return True

    def heard(self, peer: bytes, mapping: Mapping, options: list[Trailer], now: float) -> bool:
        """A bubble from `peer` that came straight from `mapping`, with these trailers:
        remember an advertiser. True when it solicits (answer with `ADVERTISEMENT`)."""
        if _discovery_type(options, ND_ADVERTISEMENT):
            entry = self._known.get(peer)
            under_way = entry is not None and entry[0] == mapping and entry[2]
            self._known[peer] = (mapping, now, under_way)
            self._known.move_to_end(peer)
            while len(self._known) > self._max:
                self._known.popitem(last=False)
        return solicits(options)

    def trusted(self, peer: bytes, now: float) -> bool:
        """`peer` answered; True when that ended a direct-only round: its indirect bubble was saved."""
        entry = self._known.get(peer)
        if entry is None or not entry[2]:
            return False
        self.saved += 1
        self._known[peer] = (entry[0], now, False)
        return True

    def stats(self) -> dict[str, int]:
        return {"load_reduction_known": len(self._known), "indirect_bubbles_saved": self.saved,
                "load_reduction_fallbacks": self.fallbacks}


def solicits(options: list[Trailer]) -> bool:
    """Whether a bubble's trailers ask for an advertisement (TeredoDiscoverySolicitation)."""
    return _discovery_type(options, ND_SOLICITATION)


def _discovery_type(options: list[Trailer], wanted: int) -> bool:
    return any(isinstance(option, NeighborDiscoveryTrailer) and option.discovery_type == wanted for option in options)
