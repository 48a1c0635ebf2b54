"""Runs our UPnP client in a lab namespace for tests/test_upnp_lab.py, driven line by line.

argv: INTERNAL_PORT EXTERNAL_PORT LEASE. Binds UDP INTERNAL_PORT and prints `bound`, then
`got <text>` for every datagram on it; on the stdin line `map` starts a PortMapper and
prints `status <json>` whenever its counters change; on `stop` stops it (the mapping is
deleted) and prints `stopped <json>`, then exits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout, installed or not

from twisted.internet import protocol, reactor, stdio, task
from twisted.protocols.basic import LineReceiver

from teredo_appliance.upnp.client import IGDClient, PortMapper


def say(*words: str) -> None:
    print(*words, flush=True)


class Receiver(protocol.DatagramProtocol):
    def datagramReceived(self, data: bytes, addr: object) -> None:
        say("got", data.decode(errors="replace"))


class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, internal: int, external: int, lease: int) -> None:
        self.mapper = PortMapper(IGDClient(reactor), internal, external, lease)
        self.seen: dict[str, int] = {}
        self.watch = task.LoopingCall(self.report)

    def report(self) -> None:
        counters = dict(self.mapper.counters)
        if counters != self.seen:
            self.seen = counters
            say("status", json.dumps({**self.mapper.status(), "counters": counters}))

    def lineReceived(self, line: bytes) -> None:
        command = line.decode().strip()
        if command == "map":
            self.mapper.startService()
            self.watch.start(0.1)
        elif command == "stop":
            self.watch.stop()
            done = self.mapper.stopService()
            done.addCallback(lambda _: say("stopped", json.dumps(dict(self.mapper.counters))))
            done.addBoth(lambda _: reactor.stop())


def main() -> None:
    internal, external, lease = (int(a) for a in sys.argv[1:4])
    reactor.listenUDP(internal, Receiver())
    stdio.StandardIO(Commands(internal, external, lease))
    say("bound")
    reactor.run()


if __name__ == "__main__":
    main()
