"""py-spy flame graphs of our relay and client while one TCP stream crosses the lab.

    needs root and py-spy (pip install py-spy):
    .venv/bin/python benchmarks/profile_datapath.py [--out /tmp/flames] [--seconds 8]

Writes relay.svg, client1.svg and their collapsed stacks (*.txt) to --out (never the
repository), and prints the top functions by own samples for each.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from teredo_lab import checks, topology
from teredo_lab.lab import OURS, LabError
from teredo_lab.scenario import Scenario, scenario_lab

TOP = 15


def record(pid: int, seconds: float, out: Path, name: str, formats: tuple[str, ...] = ("flamegraph", "raw")) -> None:
    for fmt in formats:
        target = out / f"{name}.{'svg' if fmt == 'flamegraph' else 'txt'}"
        subprocess.run(["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                        "--format", fmt, "--output", str(target), "--nonblocking"],
                       check=True, capture_output=True)


def top_functions(collapsed: Path) -> list[tuple[str, float]]:
    """Own-time share of each function (the leaf frame of each collapsed stack)."""
    own: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        own[stack.split(";")[-1]] += int(count)
    total = sum(own.values()) or 1
    return [(frame, 100 * n / total) for frame, n in own.most_common(TOP)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/teredo-flames"))
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("profile: py-spy not found on PATH (pip install py-spy)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with scenario_lab(Scenario(OURS, OURS, OURS)) as lab:
        for result in checks.Checks(lab).run((1,)):
            if not result.ok:
                raise LabError(result.line())
        pids = {name: lab.daemons[name].process.pid for name in ("relay", "client1")}  # type: ignore[union-attr]
        push = threading.Thread(target=checks.tcp_transfer,
                                args=(lab, "client1", "v6host", topology.IPV6_HOST),
                                kwargs={"seconds": args.seconds * 2 + 2})
        push.start()
        recorders = [threading.Thread(target=record, args=(pid, args.seconds, args.out, name))
                     for name, pid in pids.items()]
        for thread in recorders:
            thread.start()
        for thread in recorders:
            thread.join()
        push.join()
    for name in pids:
        print(f"== {name}: own samples, top {TOP} ({args.out / name}.svg)")
        for frame, share in top_functions(args.out / f"{name}.txt"):
            print(f"{share:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
