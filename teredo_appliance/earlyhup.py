"""A SIGHUP that arrives before the appliance can reload is remembered, not fatal.

twistd installs no SIGHUP handler, and the default action ends the process. The
appliance installs its own in startService, after the config is read, the roles built
and logging set up: that takes a while on a busy box, and systemd's ExecReload or an
operator may send SIGHUP meanwhile. `twistd teredo` therefore installs this handler at
the first code of ours twistd runs (its plugin scan imports our plugin module), and
again when it parses our options; the appliance then takes over and, if a SIGHUP came
in the meantime, reloads once (the file may have changed after it was read).

Before that, Python and Twisted's own imports run (0.1 to 0.5 s on a busy box): a SIGHUP
sent then still ends the process, as it would any program that has not started yet.
"""

from __future__ import annotations

import signal
from typing import Any

_received = False


def _remember(signum: int, frame: Any) -> None:
    global _received
    _received = True


def install() -> None:
    """Remember SIGHUP instead of dying of it, unless someone already handles it."""
    if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGHUP, _remember)


def install_for_teredo(argv: list[str]) -> None:
    """From the plugin scan: install() only in a `twistd ... teredo ...` process, so other
    twistd commands scanning the plugins keep their own SIGHUP behaviour."""
    if "teredo" in argv[1:]:
        install()


def take() -> bool:
    """Whether a SIGHUP arrived since install() (or the last take()); forgets it."""
    global _received
    received, _received = _received, False
    return received
