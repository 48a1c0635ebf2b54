"""What a role is to the appliance: a Twisted plugin providing ITeredoRole.

The roles are found with `twisted.plugin.getPlugins(ITeredoRole)`, so the built-in server,
relay and client (twisted/plugins/teredo_roles.py) and a third party's role (a module in
any `twisted/plugins/` folder on sys.path) are found the same way, and the config loader,
`teredo-checkconf`, the appliance and the lab all read the one list `role_plugins()` gives.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService
from twisted.plugin import IPlugin, getPlugins
from twisted.python.reflect import namedAny
from zope.interface import Attribute, Interface, implementer


class ITeredoRole(Interface):
    """One role of the appliance: its config section, its service, and what it can change live."""

    name = Attribute("The key under `roles:` in teredo.yaml; also the name of its service.")
    order = Attribute("Start order among the roles (lower first); roles stop in reverse.")
    schema = Attribute("The RoleSchema that turns the role's YAML section into its frozen config.")
    live_keys = Attribute("frozenset of keys the running service applies in place with reconfigure().")

    def build(config: Any, reactor: Any) -> IService:
        """A new, not yet started service for `config` (the schema's dataclass); opens nothing."""

    def load() -> None:
        """Import the service's code (the appliance does it while still root: a reload after
        twistd dropped privileges may add the role, and the install need not be readable)."""


@dataclass(frozen=True)
class RoleSchema:
    """How a role's section is checked: `checks[key](yaml_node)` returns the key's value or
    raises `teredo_appliance.config.Invalid`; the loader adds FILE:LINE and the key's path.
    A key the section leaves out takes the default of `config_class`'s field."""

    config_class: type  # a frozen dataclass, one field per key
    checks: Mapping[str, Callable[[Any], object]]
    required: tuple[str, ...] = ()
    live: frozenset[str] = frozenset()  # keys the running service applies in place (reconfigure)


@implementer(IPlugin, ITeredoRole)
@dataclass(frozen=True)
class Role:
    """An ITeredoRole whose service class is imported only when built: checking a config or
    listing the roles does not load TUN, netlink or socket code."""

    name: str
    order: int
    schema: RoleSchema
    service: str  # dotted name of the service class or factory: Service(config, reactor=reactor)

    @property
    def live_keys(self) -> frozenset[str]:
        return self.schema.live

    def build(self, config: Any, reactor: Any) -> IService:
        return namedAny(self.service)(config, reactor=reactor)

    def load(self) -> None:
        namedAny(self.service)


@functools.cache
def role_plugins() -> Mapping[str, ITeredoRole]:
    """Every role plugin on sys.path by name, in start order; the first of two with one name wins."""
    import twisted.plugins

    found: dict[str, ITeredoRole] = {}
    for role in sorted(getPlugins(ITeredoRole, twisted.plugins), key=lambda r: (r.order, r.name)):
        found.setdefault(role.name, role)
    return found


def role_names() -> tuple[str, ...]:
    """The names of the roles `role_plugins()` finds, in start order."""
    return tuple(role_plugins())
