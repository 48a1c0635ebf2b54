"""The six checks of a lab run, each usable on its own by tests.

Every check is bounded in time: pings retry (Teredo needs bubbles, and the first packets
wait while the client finds its relay) but give up after PING_TIMEOUT.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from teredo_lab import topology
from teredo_lab.lab import POLL, Lab, LabError

QUALIFY_TIMEOUT = 10.0  # check 1: both clients qualified within 10 s
PING_TIMEOUT = 10  # seconds, whole-number for ping -w
PING_INTERVAL = "0.2"
TRANSFER_BYTES = 10 * 1000 * 1000  # check 6: 10 MB
TRANSFER_PORT = 5001
TRANSFER_TIMEOUT = 30.0
TCPXFER = str(Path(__file__).with_name("tcpxfer.py"))

TITLES = {
    1: "both clients have a Teredo address on their TUN within 10 s",
    2: "client 1 pings the IPv6 host",
    3: "the IPv6 host pings client 1",
    4: "client 1 pings client 2",
    5: "client 2 pings client 1",
    6: "10 MB TCP from client 1 to the IPv6 host, same SHA-256",
}
# Checks a scenario may add to the six, for a client 2 whose own reach is the point
# (behind the symmetric NAT 2, with or without its IGD).
EXTRA_TITLES = {
    7: "client 2 pings the IPv6 host",
    8: "the IPv6 host pings client 2",
}


@dataclass(frozen=True)
class CheckResult:
    number: int
    title: str
    ok: bool
    detail: str
    seconds: float

    def line(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        return f"[{verdict}] {self.number} {self.title} ({self.seconds:.1f} s): {self.detail}"


@dataclass(frozen=True)
class Transfer:
    sent: int
    received: int
    sha_sent: str
    sha_received: str
    seconds: float  # as the receiver saw it, first byte to end of stream

    @property
    def mbits(self) -> float:
        return self.received * 8 / self.seconds / 1e6 if self.seconds else 0.0


def wait_teredo_address(
    lab: Lab,
    node: str,
    network: ipaddress.IPv6Network,
    *,
    timeout: float = QUALIFY_TIMEOUT,
    interface: str = topology.CLIENT_INTERFACE,
) -> ipaddress.IPv6Address | None:
    """The node's address inside `network` on `interface`, waiting up to `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        for ifname, address in lab.ipv6_addresses(node):
            if ifname == interface and address in network:
                return address
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL)


def ping(lab: Lab, node: str, target: ipaddress.IPv6Address | str, timeout: int = PING_TIMEOUT) -> tuple[bool, str]:
    """Ping until the first reply or `timeout` seconds: (replied, summary)."""
    argv = ["ping", "-6", "-n", "-c", "1", "-i", PING_INTERVAL, "-w", str(timeout), str(target)]
    done = lab.run(node, argv, timeout=timeout + 5, check=False)
    lines = [line for line in done.stdout.splitlines() if "transmitted" in line or "bytes from" in line]
    return done.returncode == 0, "; ".join(lines) or done.stderr.strip() or f"ping exited {done.returncode}"


def tcp_transfer(
    lab: Lab,
    src: str,
    dst: str,
    address: str,
    *,
    nbytes: int | None = None,
    seconds: float | None = None,
    port: int = TRANSFER_PORT,
    timeout: float = TRANSFER_TIMEOUT,
) -> Transfer:
    """Send `nbytes` (or for `seconds`) over TCP from node `src` to `address` in node `dst`."""
    py = [sys.executable, TCPXFER]
    sink_argv = [*py, "sink", "--bind", address, "--port", str(port), "--timeout", str(timeout)]
    amount = ["--bytes", str(nbytes)] if nbytes is not None else ["--seconds", str(seconds)]
    source_argv = [*py, "source", "--connect", address, "--port", str(port), "--timeout", str(timeout), *amount]
    with lab.background(dst, sink_argv) as sink:
        assert sink.stdout is not None and sink.stderr is not None
        if sink.stdout.readline().strip() != "listening":
            raise LabError(f"TCP sink did not start: {sink.stderr.read().strip()}")
        sent = _result(lab.run(src, source_argv, timeout=timeout + (seconds or 0) + 5, check=False), "source")
        try:
            out, _err = sink.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise LabError("TCP sink did not finish") from e
        received = _result(subprocess.CompletedProcess([], sink.returncode, out, ""), "sink")
    return Transfer(sent["bytes"], received["bytes"], sent["sha256"], received["sha256"], received["seconds"])


def _result(done: subprocess.CompletedProcess[str], side: str) -> dict:
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as e:
        raise LabError(f"TCP {side} gave no result: {done.stdout!r} {done.stderr!r}") from e
    if "error" in result:
        raise LabError(f"TCP {result['error']}")
    return result


def title(number: int) -> str:
    return TITLES.get(number) or EXTRA_TITLES[number]


class Checks:
    """Runs the checks in order, remembering the clients' addresses between them."""

    def __init__(self, lab: Lab, network: ipaddress.IPv6Network | None = None) -> None:
        self.lab = lab
        self.network = network or topology.teredo_network(topology.SERVER_ADDRESS)
        self.addresses: dict[str, ipaddress.IPv6Address] = {}

    def run(self, numbers: tuple[int, ...] = (1, 2, 3, 4, 5, 6)) -> list[CheckResult]:
        steps: dict[int, Callable[[], tuple[bool, str]]] = {
            1: self.qualified,
            2: lambda: ping(self.lab, "client1", topology.IPV6_HOST),
            3: lambda: ping(self.lab, "v6host", self.address("client1")),
            4: lambda: ping(self.lab, "client1", self.address("client2")),
            5: lambda: ping(self.lab, "client2", self.address("client1")),
            6: self.transfer,
            7: lambda: ping(self.lab, "client2", topology.IPV6_HOST),
            8: lambda: ping(self.lab, "v6host", self.address("client2")),
        }
        results = []
        for number in numbers:
            started = time.monotonic()
            try:
                ok, detail = steps[number]()
            except LabError as e:
                ok, detail = False, str(e)
            results.append(CheckResult(number, title(number), ok, detail, time.monotonic() - started))
        return results

    def address(self, client: str) -> ipaddress.IPv6Address:
        if client not in self.addresses:
            found = wait_teredo_address(self.lab, client, self.network, timeout=0)
            if found is None:
                raise LabError(f"{client} has no Teredo address in {self.network}")
            self.addresses[client] = found
        return self.addresses[client]

    def qualified(self) -> tuple[bool, str]:
        deadline = time.monotonic() + QUALIFY_TIMEOUT
        for client in ("client1", "client2"):
            found = wait_teredo_address(self.lab, client, self.network, timeout=deadline - time.monotonic())
            if found is None:
                return False, f"{client} has no address in {self.network} on {topology.CLIENT_INTERFACE}"
            self.addresses[client] = found
        return True, ", ".join(f"{c} {a}" for c, a in self.addresses.items())

    def transfer(self) -> tuple[bool, str]:
        self.address("client1")  # fail early and clearly without a Teredo address
        result = tcp_transfer(self.lab, "client1", "v6host", topology.IPV6_HOST, nbytes=TRANSFER_BYTES)
        ok = result.sent == result.received == TRANSFER_BYTES and result.sha_sent == result.sha_received
        detail = (
            f"{result.received} of {result.sent} bytes, sha256 {result.sha_received[:16]}"
            f"{'=' if result.sha_sent == result.sha_received else '!='}{result.sha_sent[:16]}, "
            f"{result.mbits:.0f} Mbit/s"
        )
        return ok, detail
