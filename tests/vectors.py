"""Real Miredo 1.2.6 datagrams (tests/data) as records the tests can index by name."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from teredo_appliance.wire.address import ipv4_to_int

VECTORS_FILE = Path(__file__).parent / "data" / "miredo-1.2.6-vectors.txt"


class Vector(NamedTuple):
    name: str
    source: tuple[int, int]  # (IPv4 as int, port)
    destination: tuple[int, int]
    payload: bytes


def _endpoint(text: str) -> tuple[int, int]:
    host, port = text.rsplit(":", 1)
    return ipv4_to_int(host), int(port)


def load_vectors() -> dict[str, Vector]:
    records = {}
    for line in VECTORS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, source, destination, payload = line.split()
        records[name] = Vector(name, _endpoint(source), _endpoint(destination), bytes.fromhex(payload))
    return records


MIREDO = load_vectors()
