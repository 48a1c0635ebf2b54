"""TCP sink and source for the lab's transfer check and throughput benchmark.

Run by path with the lab's Python inside a namespace (`ip netns exec NS python tcpxfer.py
...`), so it depends on the standard library only. Both ends print one JSON line with
the byte count, SHA-256 and duration; the sink first prints "listening" once it accepts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable

CHUNK = 256 * 1024
BLOCK = 1024 * 1024  # repeated in timed mode, where the content does not matter


def announce() -> None:
    print("listening", flush=True)


def sink(bind: str, port: int, timeout: float, ready: Callable[[], None] = announce) -> dict[str, object]:
    with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((bind, port))
        listener.listen(1)
        listener.settimeout(timeout)
        ready()
        conn, _peer = listener.accept()
    digest, total, first = hashlib.sha256(), 0, None
    with conn:
        conn.settimeout(timeout)
        while data := conn.recv(CHUNK):
            first = first or time.monotonic()
            digest.update(data)
            total += len(data)
    seconds = time.monotonic() - first if first else 0.0
    return {"bytes": total, "sha256": digest.hexdigest(), "seconds": seconds}


def source(address: str, port: int, nbytes: int | None, duration: float | None, timeout: float) -> dict[str, object]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    digest, total = hashlib.sha256(), 0
    with socket.socket(family, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect((address, port))
        started = time.monotonic()
        if nbytes is not None:
            payload = os.urandom(nbytes)
            digest.update(payload)
            conn.sendall(payload)
            total = nbytes
        else:
            assert duration is not None
            block = os.urandom(BLOCK)
            while time.monotonic() - started < duration:
                conn.sendall(block)
                digest.update(block)
                total += len(block)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(CHUNK):  # the sink closes once it has read everything
            pass
    return {"bytes": total, "sha256": digest.hexdigest(), "seconds": time.monotonic() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    p_sink = sub.add_parser("sink")
    p_sink.add_argument("--bind", required=True)
    p_source = sub.add_parser("source")
    p_source.add_argument("--connect", required=True)
    amount = p_source.add_mutually_exclusive_group(required=True)
    amount.add_argument("--bytes", type=int)
    amount.add_argument("--seconds", type=float)
    for p in (p_sink, p_source):
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    try:
        if args.mode == "sink":
            result = sink(args.bind, args.port, args.timeout)
        else:
            result = source(args.connect, args.port, args.bytes, args.seconds, args.timeout)
    except OSError as e:
        print(json.dumps({"error": f"{args.mode}: {e}"}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
