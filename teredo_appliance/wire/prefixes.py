"""An allow list and a deny list of IPv6 prefixes, matched against 16-byte addresses.

The relay asks this for every packet it forwards to native IPv6, so the lists are
compiled into a byte-wise trie: a tuple of 256 entries per level, each either a verdict
(True, False) or the next level. Most addresses are decided by their first byte; only
where a prefix boundary falls deeper (2001:0000::/32 inside 2000::/3) does the lookup go
further, one tuple index per byte. Levels exist only along prefix boundaries.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from ipaddress import IPv6Network

# A prefix as (its first `length` bits as an int, length).
_Bits = tuple[tuple[int, int], ...]
_Node = tuple["bool | _Node", ...]


class PrefixFilter:
    """Addresses inside some `allow` prefix and outside every `deny` prefix."""

    def __init__(self, allow: Iterable[IPv6Network], deny: Iterable[IPv6Network] = ()) -> None:
        self._root = _compile(_bits(allow), _bits(deny))

    def allows(self, address: bytes) -> bool:
        """Whether the 16-byte `address` passes the filter."""
        node = self._root
        for byte in address:
            node = node[byte]  # type: ignore[assignment]
            if node.__class__ is bool:
                return node  # type: ignore[return-value]
        raise AssertionError("a /128 is always decided")  # pragma: no cover


def _bits(prefixes: Iterable[IPv6Network]) -> _Bits:
    return tuple(sorted({(int(p.network_address) >> (128 - p.prefixlen), p.prefixlen) for p in prefixes}))


@lru_cache(maxsize=16)  # the relay's lists rarely change; tests build many machines
def _compile(allow: _Bits, deny: _Bits) -> _Node:
    return _level(0, 0, allow, deny)


def _level(key: int, length: int, allow: _Bits, deny: _Bits) -> _Node:
    """The 256 entries below the block whose first `length` bits are `key`."""
    entries: list[bool | _Node] = []
    for byte in range(256):
        child, child_length = key << 8 | byte, length + 8
        allowed, denied = _relation(child, child_length, allow), _relation(child, child_length, deny)
        if allowed is False or denied is True:
            entries.append(False)
        elif allowed is True and denied is False:
            entries.append(True)
        else:
            entries.append(_level(child, child_length, allow, deny))
    return tuple(entries)


def _relation(key: int, length: int, prefixes: _Bits) -> bool | None:
    """True if the block lies inside one of `prefixes`, False if it meets none, None if it
    holds part of one."""
    partial = False
    for net, prefix_length in prefixes:
        if prefix_length <= length:
            if key >> (length - prefix_length) == net:
                return True
        elif net >> (prefix_length - length) == key:
            partial = True
    return None if partial else False
