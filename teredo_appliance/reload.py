"""What a reload must do, decided apart from doing it: compare two configs component by component.

Pure: configurations in, a plan out. A component is a role, the SSH console, the control
socket or the metrics endpoint, named after its config section; its section is a frozen
dataclass, so "changed" is plain inequality and an unchanged component keeps its running
service (same sockets, TUN, peers, qualification).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any

from teredo_appliance.config_model import Config
from teredo_appliance.plugin import role_names

CONSOLE = "manhole"  # the console is diffed like a role, under its section's name
CONTROL = "control"
METRICS = "metrics"
SERVICES = (CONSOLE, CONTROL, METRICS)  # the components that are not roles, each a Config field

SUMMARY_KEYS = ("started", "stopped", "restarted", "unchanged", "errors")
CHECK_KEYS = ("start", "stop", "restart", "unchanged", "changes", "warnings", "errors")
SHOWN_VALUE = 40  # characters of a value shown in a change line


def component_order() -> tuple[str, ...]:
    """Start order: the roles as their plugins order them, then the other services; stops go in reverse."""
    return (*role_names(), *SERVICES)


def components(config: Config) -> dict[str, Any]:
    """The configured components by name, in start order: the roles, then the other services."""
    found: dict[str, Any] = dict(config.roles.enabled())
    for name in SERVICES:
        section = getattr(config, name)
        if section is not None:
            found[name] = section
    return found


@dataclass(frozen=True)
class Plan:
    """Component names per action, each in start order."""

    start: tuple[str, ...]
    stop: tuple[str, ...]
    restart: tuple[str, ...]
    keep: tuple[str, ...]
    reconfigure: tuple[str, ...] = ()  # changed only in keys the running service applies in place

    def restarting(self, names: Collection[str]) -> Plan:
        """This plan with `names` restarted instead of reconfigured (their service said it cannot)."""
        return Plan(self.start, self.stop, tuple(n for n in component_order() if n in self.restart or n in names),
                    self.keep, tuple(n for n in self.reconfigure if n not in names))

    def to_start(self) -> tuple[str, ...]:
        """Added and changed components, in start order."""
        return tuple(n for n in component_order() if n in self.start or n in self.restart)

    def to_stop(self) -> tuple[str, ...]:
        """Removed and changed components, in stop order (the reverse of start order)."""
        return tuple(n for n in reversed(component_order()) if n in self.stop or n in self.restart)


def plan_reload(old: Config, new: Config, degraded: Collection[str] = (),
                live_keys: Mapping[str, Collection[str]] | None = None) -> Plan:
    """Added components start, removed ones stop, changed ones restart, the rest are kept;
    except `degraded` ones (running but broken, e.g. their TUN was deleted): they restart.
    A component changed only in its `live_keys[name]` is reconfigured in place instead."""
    before, after = components(old), components(new)
    live_keys = live_keys or {}
    actions: dict[str, list[str]] = {"start": [], "stop": [], "restart": [], "keep": [], "reconfigure": []}
    for name in component_order():
        if name in before or name in after:
            if name not in after:
                action = "stop"
            elif name not in before:
                action = "start"
            else:
                action = "keep" if before[name] == after[name] and name not in degraded else "restart"
                if action == "restart" and name not in degraded and \
                        set(changed_keys(before[name], after[name])) <= set(live_keys.get(name, ())):
                    action = "reconfigure"
            actions[action].append(name)
    return Plan(**{action: tuple(names) for action, names in actions.items()})


def empty_summary() -> dict[str, list[str]]:
    """The reload result: component names per outcome, and one sentence per error."""
    return {key: [] for key in SUMMARY_KEYS}


def section_path(name: str) -> str:
    """Where a component's section sits in teredo.yaml."""
    return name if name == CONSOLE else f"roles.{name}"


def _shown(value: Any) -> str:
    text = str(value)
    return text if len(text) <= SHOWN_VALUE else text[:SHOWN_VALUE - 3] + "..."


def changed_keys(before: Any, after: Any) -> list[str]:
    """The keys (dataclass fields) whose values differ between two sections of one kind."""
    return [f.name for f in fields(before) if getattr(before, f.name) != getattr(after, f.name)]


def _field_changes(path: str, before: Any, after: Any) -> list[str]:
    return [f"{path}.{f.name}: {_shown(getattr(before, f.name))} -> {_shown(getattr(after, f.name))}"
            for f in fields(before) if getattr(before, f.name) != getattr(after, f.name)]


def describe_changes(old: Config, new: Config) -> list[str]:
    """What a reload from `old` to `new` changes, one short line per section or key.

    So an operator sees in the log what a truncated or mistaken file did: a removed role or
    console is named as such, a changed key shows old -> new.
    """
    before, after = components(old), components(new)
    lines = []
    for name in component_order():
        path = section_path(name)
        if name in before and name not in after:
            lines.append(f"{path} removed")
        elif name in after and name not in before:
            lines.append(f"{path} added")
        elif name in before and before[name] != after[name]:
            lines += _field_changes(path, before[name], after[name])
    return lines + _field_changes("log", old.log, new.log)


def removal_warning(plan: Plan) -> str | None:
    """The warning a plan that stops components deserves (a cut file drops sections silently)."""
    if not plan.stop:
        return None
    return (f"{', '.join(map(section_path, plan.stop))} no longer in the file: stopping"
            f" {', '.join(plan.stop)} (if the file was cut short, restore it and reload)")
