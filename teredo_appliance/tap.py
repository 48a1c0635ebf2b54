"""`twistd teredo`: command-line options and the root service built from the YAML config."""

from __future__ import annotations

import sys

from twisted.application.service import IService
from twisted.python import usage

from teredo_appliance import earlyhup
from teredo_appliance.clock import monotonic_reactor
from teredo_appliance.config import DEFAULT_PATH, ConfigError, load_config


class Options(usage.Options):
    optParameters = [
        ["config", "c", DEFAULT_PATH, "YAML configuration file (check it with teredo-checkconf)."],
    ]

    def __init__(self) -> None:
        # The earliest moment `twistd teredo` runs code of ours: from here on a SIGHUP
        # is remembered for the appliance instead of ending the process.
        earlyhup.install()
        super().__init__()


def makeService(options: Options) -> IService:
    """Load the config and build the appliance; a bad config ends twistd with its errors, no traceback."""
    path = options["config"]
    from twisted.internet import reactor  # twistd installed it before calling us

    monotonic_reactor(reactor)  # before any role schedules a timer
    try:
        config = load_config(path)
        # Imported late: --help and a bad config should not pull in the roles, TUN and netlink code.
        from teredo_appliance.appliance import Appliance

        # Building the appliance can fail too (e.g. an unusable authorized_keys): same one-line errors.
        return Appliance(path, config)
    except ConfigError as e:
        for error in e.errors:
            sys.stderr.write(error + "\n")
        raise SystemExit(1) from None
