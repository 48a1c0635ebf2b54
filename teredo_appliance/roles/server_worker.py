"""A server worker process: `python -m teredo_appliance.roles.server_worker SETTINGS_JSON`.

Started by `server_workers.ServerWorkers` with its sockets already bound on descriptors
3, 4 and 5; it serves them with the ordinary `ServerService` and reports its counters
as a JSON line on stdout every half second and once more when it stops (SIGTERM).
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    from teredo_appliance.clock import monotonic_reactor
    from teredo_appliance.roles.server import ServerService
    from teredo_appliance.roles.server_workers import INHERITED_FDS, REPORT_INTERVAL, config_from_json

    monotonic_reactor(reactor)
    settings = json.loads(argv[0])
    service = ServerService(config_from_json(settings["config"]), reactor, port=int(settings["port"]),
                            inherited=INHERITED_FDS)  # type: ignore[arg-type]

    def report() -> None:
        try:
            os.write(1, json.dumps(service.counters).encode() + b"\n")
        except OSError:  # the appliance is gone: nobody to serve for
            reactor.stop()

    service.privilegedStartService()
    service.startService()
    reporter = LoopingCall(report)
    reporter.start(REPORT_INTERVAL)
    reactor.addSystemEventTrigger("before", "shutdown", report)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
