"""Registers `twistd teredo`; the real work lives in teredo_appliance.tap."""

from twisted.application.service import ServiceMaker

teredo = ServiceMaker(
    "teredo appliance",
    "teredo_appliance.tap",
    "Teredo server, relay and client roles in one process",
    "teredo",
)
