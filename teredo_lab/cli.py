"""`teredo-lab`: build, run and remove the network-namespace Teredo lab (root only)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from teredo_lab import anycast, state, topology
from teredo_lab.demo import run_demo
from teredo_lab.lab import IMPLS, MIREDO, Lab, LabError
from teredo_lab.preflight import unavailable_reason
from teredo_lab.scenario import Scenario, run_scenario, start


def _scenario_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    for role in ("server", "relay", "client"):
        parser.add_argument(f"--{role}", choices=IMPLS, default=default, help=f"who plays the {role}")
    parser.add_argument("--client2", choices=IMPLS, help="client 2's implementation (default: --client)")
    parser.add_argument("--server2", choices=IMPLS, help="add a second server at 198.18.0.5/.6 (clients' fallback)")
    parser.add_argument("--nat2", choices=topology.NAT_TYPES, default="cone", help="NAT 2's behaviour")
    parser.add_argument(
        "--upnp", action="store_true", help="NAT 2 symmetric with a real UPnP IGD (miniupnpd); implies --nat2 symmetric"
    )
    parser.add_argument("--client3", choices=IMPLS, help="add a third client on NAT 1's LAN (198.19.0.3)")
    parser.add_argument("--hairpin", action="store_true", help="NAT 1 hairpins (a veth loop inside its namespace)")
    parser.add_argument("--box", action="store_true", help="server and relay in one namespace (one twistd if ours)")
    parser.add_argument("--hostile", action="store_true",
                        help="add a hostile host on the Internet (198.18.0.66, 198.18.0.67, 169.254.0.66)")
    parser.add_argument("--prefix", help="lab prefix (default: tl + 4 random hex digits)")
    parser.add_argument("--rundir", help="keep configs and daemon logs here (default: the lab's state directory)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teredo-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the topology; with role options, start the daemons too")
    _scenario_arguments(up, default=None)
    up.add_argument("--anycast", action="store_true",
                    help="two boxes (ours: server + relay) with BIRD behind an ECMP upstream, two clients of ours "
                         "and a Miredo client; the daemons start at once")
    down = sub.add_parser(
        "down", help="remove the labs named, or every recorded lab whose owner is gone (crashed or exited)"
    )
    down.add_argument("prefixes", nargs="*", metavar="PREFIX")
    run = sub.add_parser("run", help="build, start daemons, run the six checks, tear down")
    _scenario_arguments(run, default=MIREDO)
    run.add_argument("--keep", action="store_true", help="leave the lab up after the checks")
    sub.add_parser("list", help="show recorded labs")
    demo = sub.add_parser(
        "demo", help="every role ours (server + relay in one process): six checks, status() over SSH, tear down"
    )
    demo.add_argument("--keep", action="store_true", help="leave the lab up, its SSH consoles reachable")
    demo.add_argument("--prefix", help="lab prefix (default: tl + 4 random hex digits)")
    demo.add_argument("--rundir", help="keep configs, logs and console keys here (default: the lab's state directory)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print(f"teredo-lab: must be run as root ({unavailable_reason()})", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except (LabError, ValueError, FileExistsError) as e:
        print(f"teredo-lab: {e}", file=sys.stderr)
        return 1


def _scenario(args: argparse.Namespace) -> Scenario:
    return Scenario(
        server=args.server or MIREDO,
        relay=args.relay or MIREDO,
        client=args.client or MIREDO,
        client2=args.client2,
        server2=args.server2,
        nat2="symmetric" if args.upnp else args.nat2,
        box=args.box,
        hostile=args.hostile,
        upnp=args.upnp,
        client3=args.client3,
        hairpin=args.hairpin,
    )


def cmd_up(args: argparse.Namespace) -> int:
    daemons = any(getattr(args, r) for r in ("server", "relay", "client", "client2", "server2", "client3"))
    scenario = _scenario(args)
    options = replace(scenario.options, anycast=True) if getattr(args, "anycast", False) else scenario.options
    lab = Lab(options, prefix=args.prefix, rundir=args.rundir)
    lab.up()
    try:
        if options.anycast:
            anycast.start(lab)  # BIRD everywhere, ours on both boxes, two clients of ours and Miredo
        elif daemons:
            start(lab, scenario)
    except LabError:
        lab.down()
        raise
    print(f"lab {lab.prefix} is up; run directory {lab.rundir}")
    for node in anycast.NODES if options.anycast else topology.nodes(options):
        print(f"  {node:8} ip netns exec {lab.ns(node)} ...")
    for name, daemon in lab.daemons.items():
        print(f"  daemon {name} ({daemon.impl}) in {lab.ns(daemon.node)}: config {daemon.config}, log {daemon.log}")
    print(f"remove it with: teredo-lab down {lab.prefix}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    prefixes = args.prefixes
    if not prefixes:
        prefixes = []
        for prefix in state.recorded_prefixes():
            reason = state.in_use(prefix)
            if reason:
                print(f"lab {prefix} kept: {reason}; `teredo-lab down {prefix}` removes it")
            else:
                prefixes.append(prefix)
    for prefix in prefixes:
        for warning in state.teardown(prefix):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"lab {prefix} removed")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    scenario = _scenario(args)
    results = run_scenario(
        scenario.server,
        scenario.relay,
        scenario.client,
        scenario.client2,
        scenario.nat2,
        server2=scenario.server2,
        box=scenario.box,
        hostile=scenario.hostile,
        upnp=scenario.upnp,
        client3=scenario.client3,
        hairpin=scenario.hairpin,
        prefix=args.prefix,
        rundir=args.rundir,
        echo=lambda line: print(line, flush=True),
        keep=args.keep,
    )
    return 0 if all(r.ok for r in results) else 1


def cmd_list(args: argparse.Namespace) -> int:
    for prefix in state.recorded_prefixes():
        try:
            record = state.LabRecord.load(prefix)
        except (OSError, ValueError) as e:
            print(f"{prefix}: no readable state ({e})")
            continue
        owner = "running" if state.is_running(record.owner) else "gone"
        print(f"{prefix}: run directory {record.rundir}, built by PID {record.owner.pid} ({owner})")
        print(f"  namespaces: {' '.join(record.namespaces)}")
        for name, process in record.processes.items():
            alive = "running" if state.is_running(process) else "gone"
            print(f"  {name}: PID {process.pid} {alive} in {process.namespace}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(keep=args.keep, prefix=args.prefix, rundir=args.rundir, echo=lambda line: print(line, flush=True))


COMMANDS = {"up": cmd_up, "down": cmd_down, "run": cmd_run, "list": cmd_list, "demo": cmd_demo}

if __name__ == "__main__":
    sys.exit(main())
