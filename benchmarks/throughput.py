"""TCP throughput through the lab: client 1 -> relay -> IPv6 host, Miredo vs ours.

    teredo-lab needs root:  .venv/bin/python benchmarks/throughput.py --relay ours [--seconds 10]

Runs the lab twice in one invocation: Miredo in every role, then the same with the roles
chosen as ours. Prints Mbit/s for each and the ratio ours/Miredo; when no role is ours,
or ours cannot run yet or does not come up, it prints Miredo's figure alone and says why.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from teredo_lab import checks, topology
from teredo_lab.lab import IMPLS, MIREDO, LabError
from teredo_lab.preflight import unavailable_reason
from teredo_lab.scenario import Scenario, ours_missing, scenario_lab

DEFAULT_SECONDS = 10.0


def measure(scenario: Scenario, seconds: float) -> float:
    """Mbit/s of one TCP stream from client 1 to the IPv6 host for `seconds`."""
    with scenario_lab(scenario) as lab:
        # Qualification and relay discovery happen before the clock starts.
        for result in checks.Checks(lab).run((1, 2)):
            if not result.ok:
                logs = "\n".join(f"--- {name} ---\n{text[-3000:]}" for name, text in lab.logs().items())
                raise LabError(f"{result.line()}\n{logs}")
        transfer = checks.tcp_transfer(lab, "client1", "v6host", topology.IPV6_HOST, seconds=seconds)
        return transfer.mbits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for role in ("server", "relay", "client"):
        parser.add_argument(f"--{role}", choices=IMPLS, default=MIREDO, help=f"who plays the {role} in run 2")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="length of each TCP push")
    args = parser.parse_args(argv)
    reason = unavailable_reason(need_miredo=True)
    if reason:
        print(f"throughput: cannot run: {reason}", file=sys.stderr)
        return 2

    baseline = Scenario()
    ours = Scenario(args.server, args.relay, args.client)
    print(f"TCP client 1 -> relay -> IPv6 host, {args.seconds:.0f} s per run")
    try:
        miredo = measure(baseline, args.seconds)
    except LabError as e:
        print(f"miredo ({baseline.describe()}): failed: {e}")
        return 1
    print(f"miredo ({baseline.describe()}): {miredo:.0f} Mbit/s")

    why_not = "no role chosen as ours (--server/--relay/--client ours)" if not ours.ours_roles() else None
    why_not = why_not or ours_missing(ours.ours_roles())
    if why_not:
        print(f"ours: not measured: {why_not}; Miredo's figure alone")
        return 0
    try:
        mine = measure(ours, args.seconds)
    except LabError as e:
        print(f"ours ({ours.describe()}): did not come up, Miredo's figure alone: {e}")
        return 1
    print(f"ours ({ours.describe()}): {mine:.0f} Mbit/s")
    print(f"ratio ours/miredo: {mine / miredo:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
