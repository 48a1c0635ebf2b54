"""`twistd teredo`: command-line options and the root service built from the YAML config.

A configuration that cannot be used ends twistd with EX_CONFIG (78, sysexits.h), which
systemd's RestartPreventExitStatus= can tell from a crash worth restarting.
"""

from __future__ import annotations

import os
import sys
from typing import IO

from twisted.application.service import IService
from twisted.python import usage
from twisted.python.logfile import LogFile

from teredo_appliance import earlyhup
from teredo_appliance.clock import monotonic_reactor
from teredo_appliance.config import DEFAULT_PATH, ConfigError, load_config

EX_CONFIG = getattr(os, "EX_CONFIG", 78)


class Options(usage.Options):
    optParameters = [
        ["config", "c", DEFAULT_PATH, "YAML configuration file (check it with teredo-checkconf)."],
    ]

    def __init__(self) -> None:
        # The earliest moment `twistd teredo` runs code of ours: from here on a SIGHUP
        # is remembered for the appliance instead of ending the process.
        earlyhup.install()
        super().__init__()


def log_stream(options: Options) -> IO[str]:
    """Where twistd would log: stdout under -n without --logfile or with --logfile=-, else the file."""
    twistd = getattr(options, "parent", None) or {}
    if twistd.get("syslog"):
        raise ConfigError(["--syslog: the appliance logs to --logfile or stdout (journald reads stdout)"])
    logfile = twistd.get("logfile")
    if logfile == "-" or (not logfile and twistd.get("nodaemon", True)):
        return sys.stdout
    return LogFile.fromFullPath(logfile or "twistd.log")


def makeService(options: Options) -> IService:
    """Load the config and build the appliance; a bad config ends twistd with its errors, no traceback."""
    path = options["config"]
    from twisted.internet import reactor  # twistd installed it before calling us

    monotonic_reactor(reactor)  # before any role schedules a timer
    try:
        config = load_config(path)
        # Imported late: --help and a bad config should not pull in the roles, TUN and netlink code.
        from teredo_appliance.appliance import Appliance
        from teredo_appliance.loglevel import LogSink
        from teredo_appliance.sdnotify import Notifier

        # Building the appliance can fail too (e.g. an unusable authorized_keys): same one-line errors.
        return Appliance(
            path,
            config,
            log_sink=LogSink(log_stream(options), config.log),
            notifier=Notifier.from_environment(),
            owner=drop_to(options),
        )
    except ConfigError as e:
        for error in e.errors:
            sys.stderr.write(error + "\n")
        raise SystemExit(EX_CONFIG) from None


def drop_to(options: Options) -> tuple[int | None, int | None]:
    """The (uid, gid) twistd's -u/-g will switch to after the privileged start, as twistd
    computes them (the user's primary group when only -u is given); Nones: no switch."""
    parent = getattr(options, "parent", None)
    if parent is None:
        return None, None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is not None and gid is None:
        import pwd

        gid = pwd.getpwuid(uid).pw_gid
    return uid, gid
