"""UDP sink and paced source for the throughput benchmark's packets-per-second figure.

Run by path with the lab's Python inside a namespace, like tcpxfer.py (standard library
only). The sink prints "listening", counts datagrams until the source's marker or
`timeout`, and prints {"packets": N}; the source sends `rate` datagrams per second of
`size` bytes for `seconds`, then markers, and prints {"packets": N} as sent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import time

END = b"end-of-run"  # the source's last datagrams: the sink stops counting
TICK = 0.001  # the source sends each millisecond's share at once


def sink(bind: str, port: int, timeout: float) -> dict[str, int]:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind((bind, port))
        sock.settimeout(timeout)
        print("listening", flush=True)
        packets = 0
        try:
            while sock.recv(65535) != END:
                packets += 1
        except TimeoutError:
            pass
    return {"packets": packets}


def source(address: str, port: int, rate: float, seconds: float, size: int) -> dict[str, int]:
    payload = bytes(size)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate) + 1
            while sent < due:
                with contextlib.suppress(OSError):  # a full queue here: lost, as on the wire
                    sock.sendto(payload, (address, port))
                sent += 1
            time.sleep(TICK)
        time.sleep(0.5)  # let the last packets drain before the marker
        for _ in range(3):
            with contextlib.suppress(OSError):
                sock.sendto(END, (address, port))
    return {"packets": sent}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("sink", "source"))
    parser.add_argument("--bind", default="::")
    parser.add_argument("--connect")
    parser.add_argument("--port", type=int, default=5202)
    parser.add_argument("--rate", type=float, default=10000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--size", type=int, default=1200)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.mode == "sink":
        result = sink(args.bind, args.port, args.timeout)
    else:
        result = source(args.connect, args.port, args.rate, args.seconds, args.size)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
