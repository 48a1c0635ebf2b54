"""`teredo-lab demo`: every role ours, server and relay in one process, administered over SSH.

What the README's first command shows an operator: a multi-role box (one `twistd teredo`
running the server and the relay), two clients of ours behind their NATs, the six
checks, then each process's `status()` report as its SSH console prints it to the real
OpenSSH client. Passes (exit 0) only if every check passed and every console answered.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from teredo_lab import checks, topology
from teredo_lab.lab import OURS, Lab, LabError
from teredo_lab.scenario import Scenario, start
from teredo_lab.sshconsole import ConsoleAccess, missing_tools, status_blocks

SCENARIO = Scenario(server=OURS, relay=OURS, client=OURS, box=True)
LOG_LINES = 40  # of each daemon's log, shown when something failed
STATUS_COMMANDS = "status()\nexit()\n"

Echo = Callable[[str], None]


def heading(text: str) -> str:
    return f"\n== {text}"


def describe(lab: Lab, name: str) -> str:
    """One line per daemon: where it runs and what it is."""
    daemon = lab.daemons[name]
    assert daemon.process is not None
    what = {
        "box": f"server {topology.SERVER_ADDRESS} + {topology.SERVER_ADDRESS2} and relay {topology.RELAY_ADDRESS} "
               f"(TUN {topology.RELAY_INTERFACE}) in one process",
        "client1": f"client behind NAT 1 ({topology.NAT1_WAN}, cone), TUN {topology.CLIENT_INTERFACE}",
        "client2": f"client behind NAT 2 ({topology.NAT2_WAN}, {SCENARIO.nat2}), TUN {topology.CLIENT_INTERFACE}",
    }[name]
    return f"  {name:8} {lab.ns(daemon.node):16} twistd teredo, PID {daemon.process.pid}: {what}"


def run_demo(
    *,
    keep: bool = False,
    prefix: str | None = None,
    rundir: str | Path | None = None,
    echo: Echo = print,
) -> int:
    """Build, check, report over SSH, tear down (unless `keep`); 0 if everything passed."""
    missing = missing_tools()
    if missing:
        echo(f"teredo-lab demo: {missing} (Debian package openssh-client)")
        return 1
    lab = Lab(SCENARIO.options, prefix=prefix, rundir=rundir)
    console: ConsoleAccess | None = None
    started = time.monotonic()
    results: list[checks.CheckResult] = []
    problems: list[str] = []
    try:
        lab.up()
        echo(f"== teredo-lab demo: lab {lab.prefix}, every role ours ({SCENARIO.describe()})")
        echo(f"   configs, logs and console keys in {lab.rundir}")
        console = ConsoleAccess(lab)  # its keys live in the lab's run directory
        console.create_keys()
        start(lab, SCENARIO, manhole=console.manhole)
        for name in lab.daemons:
            console.wait(name)
            echo(describe(lab, name))
        echo(f"  {'v6host':8} {lab.ns('v6host'):16} native IPv6 host {topology.IPV6_HOST}")

        echo(heading("the six checks"))
        runner = checks.Checks(lab)
        for number in checks.TITLES:
            (result,) = runner.run((number,))
            echo(result.line())
            results.append(result)
        problems += [f"check {r.number} failed" for r in results if not r.ok]

        echo(heading("status() of each process, typed into its SSH console (OpenSSH ssh -tt, key login)"))
        for name in lab.daemons:
            echo(f"\n-- {name} ({' + '.join(lab.daemons[name].roles)}), in {lab.ns(lab.daemons[name].node)}")
            try:
                echo(status_blocks(console.run(name, STATUS_COMMANDS)))
            except LabError as error:
                echo(f"console of {name}: {error}")
                problems.append(f"the console of {name} did not answer")
        for name in lab.daemons:
            if not lab.is_running(name):
                problems.append(f"{name} is no longer running")
    except LabError as error:
        echo(f"teredo-lab demo: {str(error).splitlines()[0]}")  # the daemons' logs follow
        problems.append("the lab did not come up")
    finally:
        if problems and lab.prefix:
            echo_logs(lab, echo)
        if keep and lab.prefix and console is not None:
            echo_kept(lab, console, echo)
        elif lab.prefix:
            prefix_was = lab.prefix
            for warning in lab.down():
                echo(f"warning: {warning}")
            echo(f"\nlab {prefix_was} removed")

    passed = sum(r.ok for r in results)
    verdict = "PASSED" if not problems else "FAILED: " + "; ".join(problems)
    echo(f"demo {verdict} ({passed}/{len(checks.TITLES)} checks passed, {time.monotonic() - started:.1f} s)")
    return 0 if not problems else 1


def echo_logs(lab: Lab, echo: Echo) -> None:
    for name, daemon in lab.daemons.items():
        tail = lab.read_log(name).splitlines()[-LOG_LINES:]
        echo(heading(f"last {len(tail)} lines of {name}'s log {daemon.log}"))
        echo("\n".join(tail))


def echo_kept(lab: Lab, console: ConsoleAccess, echo: Echo) -> None:
    echo(heading(f"lab {lab.prefix} left up (--keep)"))
    for name in lab.daemons:
        try:
            echo(f"console of {name}:\n  {console.command_line(name)}")
        except OSError as error:  # its host key was never written: the daemon did not start
            echo(f"console of {name}: unavailable ({error})")
    echo("  then status(), peers('relay'), reload(), help(); exit() or Ctrl-D leaves")
    echo(f"configs and logs: {lab.rundir}")
    echo(f"tear it down with:\n  {teredo_lab()} down {lab.prefix}")


def teredo_lab() -> str:
    """How to call this very `teredo-lab` again (the venv's, from the demo script)."""
    beside = Path(sys.executable).with_name("teredo-lab")
    return str(beside) if beside.exists() else "teredo-lab"
