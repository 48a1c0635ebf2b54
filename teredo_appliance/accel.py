"""The optional C accelerators, imported once: each name is the module, or None where it did
not build (no compiler at install time) and the plain Python path runs instead.

They are twins of Python code that stays the reference: the same decisions, checked against
it by the tests, only without a Python object per datagram.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


rsfast = _optional("teredo_appliance._rsfast")  # the server's qualification fast path
offload = _optional("teredo_appliance._offload")  # TUN offloads of the relay and the client

