"""Listening on a Twisted endpoint description at once, so failures are the caller's to report.

The console and the metrics endpoint listen in twistd's privileged start (a port below
1024 works as root). `tcp:` and `unix:` endpoints listen synchronously, so a bad address
raises right there and a reload can refuse the change and keep what runs.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure

from teredo_appliance.config import ConfigError


def listen_at_once(endpoint: Any, factory: Any, label: str, description: str) -> Any:
    """The IListeningPort of `factory` on `endpoint`; the endpoint's own error if it cannot
    listen, a ConfigError naming `label` if it would only listen later."""
    outcome: list[Any] = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome:
        raise ConfigError([f"{label}: listen {description!r} does not listen at once; use a tcp: or unix: endpoint"])
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def listening_address(port: Any) -> str | None:
    """host:port (or the socket path) a listening port is bound to; None when there is none."""
    if port is None:
        return None
    host = port.getHost()
    return f"{host.host}:{host.port}" if hasattr(host, "port") else str(host.name)
