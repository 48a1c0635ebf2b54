"""Data-path throughput through the lab, Miredo and ours from one invocation.

    teredo-lab needs root:  .venv/bin/python benchmarks/throughput.py [--rounds 3] [--seconds 5]

Each round starts one lab per scenario, in alternation, and measures in it:
  - TCP, client 1 -> relay -> IPv6 host, one stream (Mbit/s), with the relay's and the
    client's CPU (process tree, user + system) as CPU-seconds per Gbit;
  - the scale curve: 1, 2 and 4 concurrent TCP streams (clients 1 and 2, one or two
    streams each), total Mbit/s and relay CPU (% of one core);
  - UDP at 1200-byte datagrams: the highest rate (packets/s) found with < 1% loss.
Scenarios: all Miredo; all ours; our relay with Miredo's server and clients. It prints
the median of the rounds for each figure and the ratio to all-Miredo's median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from teredo_lab import checks, topology
from teredo_lab.lab import MIREDO, OURS, Lab, LabError
from teredo_lab.preflight import unavailable_reason
from teredo_lab.scenario import Scenario, ours_missing, scenario_lab

DEFAULT_SECONDS = 5.0
DEFAULT_ROUNDS = 3
SCENARIOS = {
    "miredo": Scenario(),
    "ours": Scenario(OURS, OURS, OURS),
    "ours-relay/miredo-clients": Scenario(MIREDO, OURS, MIREDO),
}
STREAMS = {1: ("client1",), 2: ("client1", "client2"), 4: ("client1", "client2", "client1", "client2")}
UDPXFER = str(Path(checks.__file__).with_name("udpxfer.py"))
UDP_SIZE = 1200
UDP_PROBE_SECONDS = 2.0
UDP_PROBES = 6
UDP_START_RATE = 20000.0
MAX_LOSS = 0.01
TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU-seconds (user + system) used so far by `pid` and all its descendants."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, p in parents.items() if p == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(member, 0.0) for member in tree)


def cpu_of(lab: Lab, name: str) -> Callable[[], float]:
    process = lab.daemons[name].process
    assert process is not None
    return lambda: tree_cpu(process.pid)


def tcp_streams(lab: Lab, clients: tuple[str, ...], seconds: float) -> float:
    """Total Mbit/s of one TCP stream from each of `clients` (a name may repeat) at once."""
    results: list[float | Exception] = [0.0] * len(clients)

    def push(index: int, client: str) -> None:
        try:
            transfer = checks.tcp_transfer(lab, client, "v6host", topology.IPV6_HOST, seconds=seconds,
                                           port=checks.TRANSFER_PORT + 1 + index)
            results[index] = transfer.mbits
        except Exception as error:  # re-raised in the main thread below
            results[index] = error

    threads = [threading.Thread(target=push, args=(i, c)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, Exception):
            raise result
    return sum(results)  # type: ignore[arg-type]


def udp_loss(lab: Lab, rate: float) -> float:
    """Fraction lost of `rate` 1200-byte datagrams/s from client 1 to the IPv6 host."""
    sink_argv = [sys.executable, UDPXFER, "sink", "--bind", topology.IPV6_HOST, "--timeout", "5"]
    source_argv = [sys.executable, UDPXFER, "source", "--connect", topology.IPV6_HOST, "--rate", str(rate),
                   "--seconds", str(UDP_PROBE_SECONDS), "--size", str(UDP_SIZE)]
    with lab.background("v6host", sink_argv) as sink:
        assert sink.stdout is not None
        if sink.stdout.readline().strip() != "listening":
            raise LabError("UDP sink did not start")
        sent = json.loads(lab.run("client1", source_argv, timeout=UDP_PROBE_SECONDS + 10).stdout.splitlines()[-1])
        out, _err = sink.communicate(timeout=15)
    received = json.loads(out.strip().splitlines()[-1])["packets"]
    return max(0.0, 1 - received / max(sent["packets"], 1))


def udp_rate(lab: Lab) -> float:
    """The highest packets/s with < 1% loss: double while it holds, then bisect."""
    good, bad, rate = 0.0, None, UDP_START_RATE
    for _ in range(UDP_PROBES):
        if udp_loss(lab, rate) < MAX_LOSS:
            good = rate
        else:
            bad = rate
        rate = rate * 2 if bad is None else (good + bad) / 2
    return good


def measure(scenario: Scenario, seconds: float, udp: bool) -> dict[str, float]:
    """Every figure of one scenario in one fresh lab."""
    figures: dict[str, float] = {}
    with scenario_lab(scenario) as lab:
        # Qualification and relay discovery happen before any clock starts.
        for result in checks.Checks(lab).run((1, 2)):
            if not result.ok:
                logs = "\n".join(f"--- {name} ---\n{text[-3000:]}" for name, text in lab.logs().items())
                raise LabError(f"{result.line()}\n{logs}")
        relay_cpu, client_cpu = cpu_of(lab, "relay"), cpu_of(lab, "client1")
        for streams, clients in STREAMS.items():
            relay0, client0, start = relay_cpu(), client_cpu(), time.monotonic()
            mbits = tcp_streams(lab, clients, seconds)
            elapsed = time.monotonic() - start
            relay_used, client_used = relay_cpu() - relay0, client_cpu() - client0
            figures[f"tcp{streams}.mbits"] = mbits
            figures[f"tcp{streams}.relay_cpu_pct"] = 100 * relay_used / elapsed
            if streams == 1:
                gbits = mbits * elapsed / 1000  # Gbit moved while the CPU was counted
                figures["tcp1.relay_cpu_s_per_gbit"] = relay_used / gbits if gbits else float("nan")
                figures["tcp1.client_cpu_s_per_gbit"] = client_used / gbits if gbits else float("nan")
        if udp:
            figures["udp1200.pps"] = udp_rate(lab)
    return figures


LABELS = {
    "tcp1.mbits": ("TCP 1 stream", "Mbit/s"),
    "tcp1.relay_cpu_s_per_gbit": ("relay CPU", "CPU-s/Gbit"),
    "tcp1.client_cpu_s_per_gbit": ("client 1 CPU", "CPU-s/Gbit"),
    "tcp2.mbits": ("TCP 2 streams (2 clients)", "Mbit/s"),
    "tcp4.mbits": ("TCP 4 streams (2 clients x 2)", "Mbit/s"),
    "tcp1.relay_cpu_pct": ("relay CPU, 1 stream", "% core"),
    "tcp2.relay_cpu_pct": ("relay CPU, 2 streams", "% core"),
    "tcp4.relay_cpu_pct": ("relay CPU, 4 streams", "% core"),
    "udp1200.pps": ("UDP 1200 B, < 1% loss", "packets/s"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="length of each TCP push")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="alternating rounds (median taken)")
    parser.add_argument("--no-udp", dest="udp", action="store_false", help="skip the UDP packets/s search")
    parser.add_argument("--only", choices=[name for name in SCENARIOS if name != "miredo"], action="append",
                        help="measure only these scenarios beside Miredo (repeatable)")
    args = parser.parse_args(argv)
    scenarios = {name: s for name, s in SCENARIOS.items() if name == "miredo" or not args.only or name in args.only}
    reason = unavailable_reason(need_miredo=True) or ours_missing({"server", "relay", "client"})
    if reason:
        print(f"throughput: cannot run: {reason}", file=sys.stderr)
        return 2
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in scenarios}
    for round_number in range(1, args.rounds + 1):
        for name, scenario in scenarios.items():
            try:
                figures = measure(scenario, args.seconds, args.udp)
            except LabError as e:
                print(f"round {round_number} {name} ({scenario.describe()}): failed: {e}")
                return 1
            runs[name].append(figures)
            shown = ", ".join(f"{key} {value:.3g}" for key, value in figures.items())
            print(f"round {round_number} {name}: {shown}", flush=True)
    medians = {name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
               for name, rounds in runs.items()}
    print(f"\nmedians of {args.rounds} alternating rounds, {args.seconds:.0f} s per TCP push; ratio = x / miredo")
    print(f"{'figure':34} {'unit':11}" + "".join(f"{name:>28}" for name in scenarios))
    for key, (label, unit) in LABELS.items():
        if key not in medians["miredo"]:
            continue
        base = medians["miredo"][key]
        cells = []
        for name in scenarios:
            value = medians[name][key]
            cells.append(f"{value:.3g}" if name == "miredo" or not base else f"{value:.3g} ({value / base:.2f}x)")
        print(f"{label:34} {unit:11}" + "".join(f"{cell:>28}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
