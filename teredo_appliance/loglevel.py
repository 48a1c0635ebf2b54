"""The daemon's log observer: `log.level`, `log.namespaces` and `log.format` from the config.

twistd asks the application for an ILogObserver component before it falls back to its
own (`--logfile`): the appliance hands it a LogSink, built by `tap.py` on the stream
twistd would have used. Levels are Twisted's own LogLevelFilterPredicate, per namespace
(so Conch's per-connection chatter sits below the default level); the format is
twistd's classic text or one JSON object per line, for journald or Loki. A reload
swaps both in place.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

from teredo_appliance.config_model import LogConfig

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}
# Below the default unless the config says otherwise: an SSH login is several events per
# connection (key exchange, auth, channels), the console's own lines say what matters.
QUIET_NAMESPACES = {"twisted.conch": "warn"}


def level_predicate(config: LogConfig) -> LogLevelFilterPredicate:
    """The config's default level, Conch quietened, then the config's namespaces on top."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[config.level])
    for namespace, level in {**QUIET_NAMESPACES, **dict(config.namespaces)}.items():
        predicate.setLogLevelForNamespace(namespace, LEVELS[level])
    return predicate


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def json_line(event: LogEvent) -> str:
    """One JSON object: time, level, namespace, text, then the event's own serialisable fields."""
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
        "level": getattr(event.get("log_level"), "name", None),
        "namespace": event.get("log_namespace"),
        "text": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and _jsonable(value):
            record[key] = value
    return json.dumps(record) + "\n"


@implementer(ILogObserver)
class LogSink:
    """Writes the events the config's levels let through, in the config's format, to `out`."""

    def __init__(self, out: IO[str], config: LogConfig) -> None:
        self._out = out
        self._text = textFileLogObserver(out)
        self.configure(config)

    def configure(self, config: LogConfig) -> None:
        self.config = config
        self._predicate = level_predicate(config)

    def __call__(self, event: LogEvent) -> None:
        # The predicate needs both keys; an event without them (rare, foreign) passes.
        if "log_level" in event and "log_namespace" in event and self._predicate(event) is PredicateResult.no:
            return
        if self.config.format == "json":
            self._out.write(json_line(event))
            self._out.flush()
        else:
            self._text(event)
