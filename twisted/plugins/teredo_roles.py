"""The appliance's three roles as Twisted plugins (teredo_appliance.plugin.ITeredoRole).

Their config checks and live keys live in teredo_appliance.config (so a checkout's tests
see its own even when an older copy is installed); their services are imported only when
a role is built.
"""

from teredo_appliance.config import CLIENT_SCHEMA, RELAY_SCHEMA, SERVER_SCHEMA
from teredo_appliance.plugin import Role

server = Role(
    name="server",
    order=10,
    schema=SERVER_SCHEMA,
    service="teredo_appliance.roles.server_workers.server_role",  # one process, or supervised workers
)
relay = Role(
    name="relay",
    order=20,
    schema=RELAY_SCHEMA,
    service="teredo_appliance.roles.relay.RelayService",
)
client = Role(
    name="client",
    order=30,
    schema=CLIENT_SCHEMA,
    service="teredo_appliance.roles.client.ClientService",
)
