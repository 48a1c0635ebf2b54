"""A complete, minimal third-party role for teredo-appliance: `roles: {example: {message: ...}}`.

Put the folder that holds this `twisted/plugins/` on sys.path (for instance
`PYTHONPATH=examples/role-plugin`): `twistd teredo`, `teredo-checkconf` and the lab then find
the role with `twisted.plugin.getPlugins(ITeredoRole)`, like the built-in ones. No
`__init__.py` here: `twisted.plugins` is a namespace every install adds to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from teredo_appliance.config import nonempty_text
from teredo_appliance.plugin import Role, RoleSchema


@dataclass(frozen=True)
class ExampleConfig:
    """The role's section, frozen: a reload compares two of them to see whether it changed."""

    message: str


class ExampleService(Service):
    """Logs its message when it starts and reports it in status()."""

    log = Logger()

    def __init__(self, config: ExampleConfig, reactor: Any = None) -> None:
        self.config = config

    def startService(self) -> None:
        super().startService()
        self.log.info("example role: {message}", message=self.config.message)

    def status(self) -> dict[str, Any]:
        return {"role": "example", "running": bool(self.running), "message": self.config.message}


example = Role(
    name="example",
    order=100,  # after the built-in roles (10, 20, 30)
    schema=RoleSchema(ExampleConfig, {"message": nonempty_text}, required=("message",)),
    service="twisted.plugins.teredo_example_role.ExampleService",
)
