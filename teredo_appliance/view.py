"""What the console, the control socket and the metrics see of the appliance: a narrow view.

They are typed against this Protocol, not against appliance.Appliance, so none of them
imports the appliance module (which builds them): no import circle, and a test can hand
them any object with these members.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from teredo_appliance.config_model import Config


class ApplianceView(Protocol):
    """The running appliance as its administration interfaces use it."""

    config: Config  # the configuration in force (a reload replaces it)
    config_path: str

    def status(self) -> dict[str, dict[str, Any]]:
        """Each running component's status() by name, in start order."""

    def roles(self) -> Mapping[str, Any]:
        """The running role services by name, in start order."""

    def peers(self, role: str, limit: int | None = None) -> dict[str, Any]:
        """One running role's peer table; LookupError if it is not running or has none."""

    def reload(self) -> Deferred[dict[str, list[str]]]:
        """Re-read the config file and apply it; fires with the summary."""

    def check(self) -> dict[str, list[str]]:
        """What reload() would do, changing nothing."""
