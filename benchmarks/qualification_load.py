"""Qualification load: RAs per second from miredo-server and from ours, same box, same load.

    needs root:  .venv/bin/python benchmarks/qualification_load.py [--rounds 3] [--duration 5]
                 .venv/bin/python benchmarks/qualification_load.py --servers ours --profile ours.pstats

Builds one network namespace (198.18.0.1 and .2 for the server, .100 for the load, all
on its loopback). Then, alternating servers for `--rounds` rounds (a fairer comparison on
a busy machine): start the server pinned to one CPU, flood it from the other CPU with
authenticated RSs from many ports (`rs_loadgen.py`) for a fixed time, read its peak RSS
(VmHWM) and its user/kernel CPU split, stop it. Prints one line per run, each server's
median RA/s and the ratio ours/miredo-server. Each line also shows the generator's send
rate and the datagrams the server's socket had to drop: both prove that the load, not
the generator, was the limit ("RA lost" counts RAs our own receiver failed to read).

Ours runs as `qualification_load.py serve`: the ServerService on the default (epoll)
reactor, as the appliance runs it, without the rest of the appliance.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from benchmarks.rs_loadgen import udp_sockets

PRIMARY, SECONDARY, LOAD_SOURCE = "198.18.0.1", "198.18.0.2", "198.18.0.100"  # RFC 2544 benchmark range
HERE = Path(__file__).resolve().parent
READY_TIMEOUT = 10.0
# The whole appliance as users run it: `twistd -n teredo -c FILE`, the server role only,
# the RS limit lifted as in `serve` (the load comes from one address).
APPLIANCE_CONFIG = """\
roles:
  server:
    bind_address: {primary}
    bind_address2: {secondary}
    rs_rate: 1000000
    rs_burst: 1000000
control: false
"""


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    """A private namespace with the three addresses on its loopback; removed even on failure."""
    name = f"tqload-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        for address in (PRIMARY, SECONDARY, LOAD_SOURCE):
            subprocess.run(["ip", "-n", name, "addr", "add", f"{address}/32", "dev", "lo"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _pinned(cpus: set[int] | None) -> Any:
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (miredo-server does its work in a child)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return found


def peak_rss_kib(pid: int) -> int:
    """Largest VmHWM in the process tree."""
    peak = 0
    for current in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
    return peak


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by the process tree: how kernel-bound a server is."""
    user = system = 0
    for current in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])
    ticks = os.sysconf("SC_CLK_TCK")
    return user / ticks, system / ticks


def start_server(impl: str, ns: str, rundir: Path, cpus: set[int] | None, profile: str | None) -> subprocess.Popen:
    if impl == "miredo":
        conf = rundir / "miredo-server.conf"
        conf.write_text(f"ServerBindAddress {PRIMARY}\nServerBindAddress2 {SECONDARY}\n")
        conf.chmod(0o644)
        argv = ["miredo-server", "-f", "-c", str(conf), "-p", str(rundir / "miredo-server.pid")]
    elif impl.startswith("twistd"):
        workers = int(impl.partition("-w")[2] or 1)
        conf = rundir / f"{impl}.yaml"
        conf.write_text(APPLIANCE_CONFIG.format(primary=PRIMARY, secondary=SECONDARY, workers=workers))
        argv = [str(Path(sys.executable).parent / "twistd"), "--pidfile=", "-n", "teredo", "-c", str(conf)]
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "serve", PRIMARY, SECONDARY]
        if profile:
            argv += ["--profile", profile]
    log = (rundir / f"{impl}.log").open("wb")
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))  # the checkout's code and twistd plugin
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=log, stderr=subprocess.STDOUT, env=env,
                            stdin=subprocess.DEVNULL, preexec_fn=_pinned(cpus), start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT
    while (PRIMARY, 3544) not in udp_sockets(proc.pid) or (SECONDARY, 3544) not in udp_sockets(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{impl} server did not come up:\n{(rundir / f'{impl}.log').read_text()[-3000:]}")
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (ours alone: it was started in a new session), then reap."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def measure(impl: str, ns: str, rundir: Path, args: argparse.Namespace) -> dict[str, Any]:
    server_cpus = {args.server_cpu} if args.server_cpu >= 0 else None
    if impl.endswith("-w2"):  # two workers need two CPUs; the load shares them (see RA per CPU-second)
        server_cpus = None
    load_cpus = {args.load_cpu} if args.load_cpu >= 0 else None
    proc = start_server(impl, ns, rundir, server_cpus, args.profile if impl == "ours" else None)
    try:
        drops_before = udp_sockets(proc.pid).get((PRIMARY, 3544), 0)
        user_before, system_before = cpu_seconds(proc.pid)
        load = [sys.executable, str(HERE / "rs_loadgen.py"), PRIMARY, "--source", LOAD_SOURCE,
                "--ports", str(args.ports), "--senders", str(args.senders), "--batch", str(args.batch),
                "--warmup", str(args.warmup), "--duration", str(args.duration), *(["--gso"] if args.gso else [])]
        spy = None
        if args.flamegraphs and not impl.startswith("miredo"):
            svg = Path(args.flamegraphs) / f"{impl}-{time.strftime('%H%M%S')}.svg"
            spy = subprocess.Popen(["py-spy", "record", "--subprocesses", "--nonblocking", "-o", str(svg),
                                    "--pid", str(proc.pid), "--duration", str(int(args.warmup + args.duration))],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))
        done = subprocess.run(["ip", "netns", "exec", ns, *load], capture_output=True, text=True,
                              preexec_fn=_pinned(load_cpus), check=True)
        if spy is not None:
            spy.wait()
        result = json.loads(done.stdout)
        result["server_socket_drops"] = udp_sockets(proc.pid).get((PRIMARY, 3544), 0) - drops_before
        result["peak_rss_kib"] = peak_rss_kib(proc.pid)
        user, system = cpu_seconds(proc.pid)
        user, system = user - user_before, system - system_before
        result["server_user_share"] = round(user / max(user + system, 1e-9), 2)  # the rest is the kernel
        # RA per CPU-second of the server's whole process tree (workers included), over the run.
        result["ra_per_cpu_second"] = round(result["valid_ra"] / max(user + system, 1e-9))
    finally:
        stop(proc)
    return result


def serve(primary: str, secondary: str, profile: str | None) -> int:
    """Our server alone on the default reactor: what the benchmark measures."""
    from twisted.internet import reactor

    from teredo_appliance.config import MAX_RS_RATE
    from teredo_appliance.config_model import ServerConfig
    from teredo_appliance.roles.server import ServerService

    # The load comes from one address: lift its RS rate limit, but keep paying for the check.
    config = ServerConfig(IPv4Address(primary), IPv4Address(secondary), rs_rate=MAX_RS_RATE, rs_burst=1_000_000)
    service = ServerService(config, reactor)
    service.privilegedStartService()
    service.startService()
    if profile is None:
        reactor.run()
        return 0
    import cProfile

    profiler = cProfile.Profile()
    profiler.runcall(reactor.run)
    profiler.dump_stats(profile)
    return 0


def report(rounds: dict[str, list[dict[str, Any]]]) -> None:
    """One line per run, then each server's median RA/s (runs alternate servers: fairer on a busy box)."""
    print(f"{'server':<8} {'RA/s':>9} {'load sent/s':>12} {'server drops':>13} {'RA lost':>8} {'peak RSS':>10}"
          f" {'user CPU':>9} {'RA/CPU-s':>9}")
    for impl, runs in rounds.items():
        for r in runs:
            print(f"{impl:<8} {r['ra_rate']:>9,} {r['send_rate']:>12,} {r['server_socket_drops']:>13,} "
                  f"{r['receiver_drops']:>8,} {r['peak_rss_kib'] / 1024:>7.1f} MiB {r['server_user_share']:>9.0%}"
                  f" {r['ra_per_cpu_second']:>9,}")
            if r["send_rate"] <= r["ra_rate"] * 1.05 or not r["server_socket_drops"]:
                print(f"  warning: the load did not saturate {impl}: that figure is the generator's")
    medians = {impl: statistics.median(r["ra_rate"] for r in runs) for impl, runs in rounds.items()}
    for impl, median in medians.items():
        rss = max(r["peak_rss_kib"] for r in rounds[impl]) / 1024
        print(f"median {impl}: {median:,.0f} RA/s, peak RSS {rss:.1f} MiB")
    per_cpu = {impl: statistics.median(r["ra_per_cpu_second"] for r in runs) for impl, runs in rounds.items()}
    for impl in medians:
        if impl != "miredo" and medians.get("miredo"):
            print(f"ratio {impl}/miredo-server: RA/s {medians[impl] / medians['miredo']:.2f}, "
                  f"RA per CPU-second {per_cpu[impl] / max(per_cpu['miredo'], 1):.2f}")
    if medians.get("twistd") and medians.get("twistd-w2"):
        # On two cores the load takes one: two workers share the other, so RA/s cannot double
        # here. RA per CPU-second of the whole tree says what each worker's core yields: equal
        # to one worker's (1.00) means N free cores give N times one worker.
        print(f"scaling twistd workers 2/1: RA/s {medians['twistd-w2'] / medians['twistd']:.2f}, "
              f"RA per CPU-second {per_cpu['twistd-w2'] / max(per_cpu['twistd'], 1):.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="(internal) run our server in the current namespace")
    serve_parser.add_argument("primary")
    serve_parser.add_argument("secondary")
    serve_parser.add_argument("--profile", help="write cProfile stats of the reactor loop here")
    parser.add_argument("--servers", default="miredo,ours,twistd,twistd-w2",
                        help="which servers, in order: miredo, ours (the bare service), twistd, twistd-wN (N workers)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per server")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server, alternating")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds of load first")
    parser.add_argument("--ports", type=int, default=64, help="source ports of the load")
    parser.add_argument("--senders", type=int, default=2, help="load-sending processes (share the load CPU)")
    parser.add_argument("--batch", type=int, default=64, help="datagrams per sendmmsg call")
    parser.add_argument("--server-cpu", type=int, default=1, help="CPU for the server (-1: unpinned)")
    parser.add_argument("--load-cpu", type=int, default=0, help="CPU for the load (-1: unpinned)")
    parser.add_argument("--profile", help="profile ours with cProfile into this file (slows it down)")
    parser.add_argument("--flamegraphs", help="py-spy flame graphs of ours (SVG) into this directory")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    parser.add_argument("--plain-load", dest="gso", action="store_false",
                        help="send the load with sendmmsg instead of UDP GSO (costlier: the load may become the limit)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.primary, args.secondary, args.profile)
    if os.geteuid() != 0:
        print("qualification_load: needs root (network namespace, raw socket)", file=sys.stderr)
        return 2
    servers = [s for s in args.servers.split(",") if s]
    if "miredo" in servers and not shutil.which("miredo-server"):
        print("qualification_load: miredo-server is not installed; measuring ours alone", file=sys.stderr)
        servers.remove("miredo")
    results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in servers}
    with tempfile.TemporaryDirectory(prefix="tqload-") as rundir, namespace() as ns:
        os.chmod(rundir, 0o755)  # miredo-server drops to its own user and must still read its config
        for _ in range(args.rounds):
            for impl in servers:
                results[impl].append(measure(impl, ns, Path(rundir), args))
    report(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
