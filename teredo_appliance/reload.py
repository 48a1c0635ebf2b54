"""What a reload must do, decided apart from doing it: compare two configs component by component.

Pure: configurations in, a plan out. A component is a role or the SSH console, named after
its config section; its section is a frozen dataclass, so "changed" is plain inequality and
an unchanged component keeps its running service (same sockets, TUN, peers, qualification).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from teredo_appliance.config_model import ROLE_NAMES, Config

CONSOLE = "manhole"  # the console is diffed like a role, under its section's name
COMPONENT_ORDER = (*ROLE_NAMES, CONSOLE)  # start order; stops go in reverse

SUMMARY_KEYS = ("started", "stopped", "restarted", "unchanged", "errors")


def components(config: Config) -> dict[str, Any]:
    """The configured components by name, in start order: the roles, then the console."""
    found: dict[str, Any] = dict(config.roles.enabled())
    if config.manhole is not None:
        found[CONSOLE] = config.manhole
    return found


@dataclass(frozen=True)
class Plan:
    """Component names per action, each in start order."""

    start: tuple[str, ...]
    stop: tuple[str, ...]
    restart: tuple[str, ...]
    keep: tuple[str, ...]

    def to_start(self) -> tuple[str, ...]:
        """Added and changed components, in start order."""
        return tuple(n for n in COMPONENT_ORDER if n in self.start or n in self.restart)

    def to_stop(self) -> tuple[str, ...]:
        """Removed and changed components, in stop order (the reverse of start order)."""
        return tuple(n for n in reversed(COMPONENT_ORDER) if n in self.stop or n in self.restart)


def plan_reload(old: Config, new: Config, degraded: Collection[str] = ()) -> Plan:
    """Added components start, removed ones stop, changed ones restart, the rest are kept;
    except `degraded` ones (running but broken, e.g. their TUN was deleted): they restart."""
    before, after = components(old), components(new)
    actions: dict[str, list[str]] = {"start": [], "stop": [], "restart": [], "keep": []}
    for name in COMPONENT_ORDER:
        if name in before or name in after:
            if name not in after:
                action = "stop"
            elif name not in before:
                action = "start"
            else:
                action = "keep" if before[name] == after[name] and name not in degraded else "restart"
            actions[action].append(name)
    return Plan(**{action: tuple(names) for action, names in actions.items()})


def empty_summary() -> dict[str, list[str]]:
    """The reload result: component names per outcome, and one sentence per error."""
    return {key: [] for key in SUMMARY_KEYS}
