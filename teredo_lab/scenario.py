"""A scenario: which implementation plays which role in the lab, and how to run it.

`run_scenario(server=..., relay=..., client=...)` is the whole `teredo-lab run`;
`scenario_lab(Scenario(...))` gives a started lab to tests that need more (stopping a
server for failover, editing a daemon's yaml for reload).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teredo_appliance.plugin import role_plugins
from teredo_lab import checks, topology
from teredo_lab.lab import IMPLS, MIREDO, OURS, Lab, LabError


@dataclass(frozen=True)
class DaemonSpec:
    name: str
    impl: str
    node: str
    roles: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    server: str = MIREDO
    relay: str = MIREDO
    client: str = MIREDO
    client2: str | None = None  # default: the same as client
    server2: str | None = None  # a second server at 198.18.0.5/.6 (clients' fallback), or none
    nat2: str = "cone"
    box: bool = False  # server and relay in one namespace; one twistd when both are ours
    wrap_ours: tuple[str, ...] = ()  # command prefix for our daemons (lab/confine.py)
    hostile: bool = False  # a hostile host on the lab's Internet (topology.Options.hostile)
    upnp: bool = False  # NAT 2 runs a UPnP IGD (needs nat2="symmetric")
    client3: str | None = None  # a third client on NAT 1's LAN, beside client 1, or none
    hairpin: bool = False  # NAT 1 hairpins (topology.Options.hairpin)

    def __post_init__(self) -> None:
        for role in ("server", "relay", "client", "client2", "server2", "client3"):
            impl = getattr(self, role)
            if impl is not None and impl not in IMPLS:
                raise ValueError(f"{role}: implementation must be one of {', '.join(IMPLS)}, not {impl!r}")

    @property
    def options(self) -> topology.Options:
        return topology.Options(
            second_server=self.server2 is not None, box=self.box, nat2=self.nat2, hostile=self.hostile, upnp=self.upnp,
            client3=self.client3 is not None, hairpin=self.hairpin,
        )

    def describe(self) -> str:
        parts = [f"server={self.server}", f"relay={self.relay}", f"client={self.client}"]
        parts += [f"client2={self.client2}"] if self.client2 else []
        parts += [f"server2={self.server2}"] if self.server2 else []
        parts += [f"nat2={self.nat2}"] if self.nat2 != "cone" else []
        parts += ["box"] if self.box else []
        parts += ["hostile"] if self.hostile else []
        parts += ["upnp"] if self.upnp else []
        parts += [f"client3={self.client3}"] if self.client3 else []
        parts += ["hairpin"] if self.hairpin else []
        return " ".join(parts)

    def infrastructure(self) -> list[DaemonSpec]:
        """Servers and relay: started first, and waited for."""
        if self.box and self.server == self.relay == OURS:
            specs = [DaemonSpec("box", OURS, "box", {"server": server_section(), "relay": relay_section()})]
        else:
            specs = [
                DaemonSpec("server", self.server, "server", {"server": server_section()}),
                DaemonSpec("relay", self.relay, "relay", {"relay": relay_section()}),
            ]
        if self.server2:
            specs.append(DaemonSpec("server2", self.server2, "server2", {"server": server_section(second=True)}))
        return specs

    def clients(self) -> list[DaemonSpec]:
        section = client_section(fallback=self.server2 is not None)
        # Our clients run with the default extensions: behind NAT 2's IGD (`upnp`), client 2
        # maps its port (RFC 6081 §5.3); elsewhere the search finds no IGD. Miredo cannot.
        specs = [
            DaemonSpec("client1", self.client, "client1", {"client": section}),
            DaemonSpec("client2", self.client2 or self.client, "client2", {"client": section}),
        ]
        if self.client3:
            specs.append(DaemonSpec("client3", self.client3, "client3", {"client": section}))
        return specs

    def ours_roles(self) -> set[str]:
        roles = {role for role in ("server", "relay", "client") if getattr(self, role) == OURS}
        roles |= {"client"} if OURS in (self.client2, self.client3) else set()
        return roles | ({"server"} if self.server2 == OURS else set())


def server_section(second: bool = False) -> dict[str, Any]:
    if second:
        return {"bind_address": topology.SERVER2_ADDRESS, "bind_address2": topology.SERVER2_ADDRESS2}
    return {"bind_address": topology.SERVER_ADDRESS, "bind_address2": topology.SERVER_ADDRESS2}


def relay_section() -> dict[str, Any]:
    return {
        "interface": topology.RELAY_INTERFACE,
        "bind_address": topology.RELAY_ADDRESS,
        "bind_port": topology.RELAY_PORT,
    }


def client_section(fallback: bool = False) -> dict[str, Any]:
    return {
        "server_address": topology.SERVER_ADDRESS,
        "server_address2": topology.SERVER_ADDRESS2,
        "fallback_servers": [topology.SERVER2_ADDRESS] if fallback else [],
        "interface": topology.CLIENT_INTERFACE,
    }


def ours_missing(roles: set[str]) -> str | None:
    """Why our implementation of these roles cannot run yet, or None if it can."""
    plugins = role_plugins()
    for role in sorted(roles):
        if role not in plugins:
            return f"no role plugin provides {role!r}"
        try:
            plugins[role].load()
        except (ImportError, AttributeError) as e:
            return f"the {role} role's service cannot be loaded ({e})"
    return None


def start(lab: Lab, scenario: Scenario, manhole: Callable[[str], dict[str, Any]] | None = None) -> None:
    """Start the servers and relay, wait until they listen, then start the clients.

    `manhole(daemon name)`, if given, is the `manhole` section each of our daemons gets.
    """

    def launch(spec: DaemonSpec) -> None:
        console = manhole(spec.name) if manhole is not None and spec.impl == OURS else None
        lab.start_daemon(spec.name, spec.impl, spec.node, spec.roles, manhole=console)

    infrastructure = scenario.infrastructure()
    for spec in infrastructure:
        launch(spec)
    for spec in infrastructure:
        lab.wait_ready(spec.name)
    for spec in scenario.clients():
        launch(spec)


@contextmanager
def scenario_lab(scenario: Scenario, *, prefix: str | None = None, rundir: str | Path | None = None) -> Iterator[Lab]:
    """A lab with the scenario's daemons started; torn down when the block ends."""
    with Lab(scenario.options, prefix=prefix, rundir=rundir, wrap_ours=scenario.wrap_ours) as lab:
        start(lab, scenario)
        yield lab


def run_scenario(
    server: str = MIREDO,
    relay: str = MIREDO,
    client: str = MIREDO,
    client2: str | None = None,
    nat2: str = "cone",
    *,
    server2: str | None = None,
    box: bool = False,
    hostile: bool = False,
    upnp: bool = False,
    client3: str | None = None,
    hairpin: bool = False,
    prefix: str | None = None,
    rundir: str | Path | None = None,
    echo: Callable[[str], None] | None = None,
    keep: bool = False,
    extra: tuple[int, ...] = (),
) -> list[checks.CheckResult]:
    """Build the lab, start the daemons, run the six checks (and the `extra` ones of
    checks.EXTRA_TITLES, in the same lab), tear down (unless `keep`).

    `echo` receives one line per check as it completes and, if any check failed, every
    daemon's log. A daemon that does not come up fails all six checks with the reason.
    """
    say = echo or (lambda line: None)
    scenario = Scenario(server=server, relay=relay, client=client, client2=client2, server2=server2, nat2=nat2,
                        box=box, hostile=hostile, upnp=upnp, client3=client3, hairpin=hairpin)
    lab = Lab(scenario.options, prefix=prefix, rundir=rundir)
    started = time.monotonic()
    numbers = (*checks.TITLES, *extra)
    try:
        lab.up()
        say(f"lab {lab.prefix} up ({scenario.describe()}), run directory {lab.rundir}")
        try:
            start(lab, scenario)
        except LabError as e:
            reason = str(e).splitlines()[0]  # the logs follow below
            results = [checks.CheckResult(n, checks.title(n), False, f"not run: {reason}", 0.0) for n in numbers]
            for result in results:
                say(result.line())
        else:
            runner, results = checks.Checks(lab), []
            for number in numbers:
                (result,) = runner.run((number,))
                say(result.line())
                results.append(result)
        for name, daemon in lab.daemons.items():
            if not lab.is_running(name):
                say(f"daemon {name} ({daemon.impl}) is no longer running (see its log)")
        if not all(r.ok for r in results):
            for name, text in lab.logs().items():
                say(f"----- log of {name} ({lab.daemons[name].impl}): {lab.daemons[name].log} -----\n{text}")
        passed = sum(r.ok for r in results)
        say(f"{passed}/{len(results)} checks passed in {time.monotonic() - started:.1f} s")
        return results
    finally:
        if keep and lab.prefix:
            say(f"lab {lab.prefix} left up; remove it with: teredo-lab down {lab.prefix}")
        else:
            for warning in lab.down():
                say(f"warning: {warning}")
