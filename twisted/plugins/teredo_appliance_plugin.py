"""Registers `twistd teredo`; the real work lives in teredo_appliance.tap."""

import sys

from twisted.application.service import ServiceMaker

from teredo_appliance import earlyhup

earlyhup.install_for_teredo(sys.argv)  # the first code of ours twistd runs: survive an early SIGHUP

teredo = ServiceMaker(
    "teredo appliance",
    "teredo_appliance.tap",
    "Teredo server, relay and client roles in one process",
    "teredo",
)
