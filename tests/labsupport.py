"""Lab scenarios as trial tests: skip reasons and a mixin giving one test per check.

A role's lab test is then:

    class RelayInLab(ScenarioChecks, unittest.TestCase):
        scenario = Scenario(relay="ours")

The scenario runs once per class (the first test runs it), and each of the six checks is
its own test, failing with every daemon's log attached.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

from twisted.trial import unittest

import teredo_appliance
from teredo_lab import checks
from teredo_lab.lab import MIREDO, Lab
from teredo_lab.preflight import unavailable_reason
from teredo_lab.scenario import Scenario, ours_missing, run_scenario

REQUIRE_LAB = "TEREDO_REQUIRE_LAB"  # set by CI: a lab test that would skip fails instead
ROOT = Path(teredo_appliance.__file__).resolve().parent.parent


def daemon_status(lab: Lab, name: str) -> dict[str, Any]:
    """`teredoctl status --json` of our daemon `name`, asked in its namespace: every role's report."""
    daemon = lab.daemons[name]
    done = lab.run(daemon.node, ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "teredo_appliance.teredoctl",
                                 "--socket", str(daemon.control), "status", "--json"])
    return json.loads(done.stdout)


@functools.cache
def lab_skip_reason(need_miredo: bool = True) -> str | None:
    """Why lab tests cannot run here; computed once (it creates a probe namespace)."""
    return unavailable_reason(need_miredo=need_miredo)


def skip_unless_lab(reason: str | None) -> None:
    """Skip with the reason, or fail with it when the lab is required (CI)."""
    if reason is None:
        return
    if os.environ.get(REQUIRE_LAB) == "1":
        raise unittest.FailTest(f"{REQUIRE_LAB}=1 but the lab cannot run: {reason}")
    raise unittest.SkipTest(reason)


def scenario_skip_reason(scenario: Scenario) -> str | None:
    uses_miredo = MIREDO in {scenario.server, scenario.relay, scenario.client, scenario.client2, scenario.server2,
                             scenario.client3}
    return lab_skip_reason(uses_miredo) or ours_missing(scenario.ours_roles())


class ScenarioChecks:
    """Mixin for a twisted.trial TestCase: set `scenario`; get test_check_1 .. test_check_6.

    `extra_checks` (numbers of checks.EXTRA_TITLES) run in the same lab after the six.
    """

    scenario: ClassVar[Scenario]
    extra_checks: ClassVar[tuple[int, ...]] = ()
    _outcomes: ClassVar[dict[tuple[Scenario, tuple[int, ...]], tuple[dict[int, checks.CheckResult], str]]] = {}

    def outcome(self) -> tuple[dict[int, checks.CheckResult], str]:
        key = (self.scenario, self.extra_checks)
        if key not in self._outcomes:
            skip_unless_lab(scenario_skip_reason(self.scenario))
            lines: list[str] = []
            rundir = os.path.abspath(f"lab-{self.scenario.describe().replace(' ', '_').replace('=', '-')}")
            results = run_scenario(
                self.scenario.server,
                self.scenario.relay,
                self.scenario.client,
                self.scenario.client2,
                self.scenario.nat2,
                server2=self.scenario.server2,
                box=self.scenario.box,
                upnp=self.scenario.upnp,
                rundir=rundir,
                echo=lines.append,
                extra=self.extra_checks,
            )
            self._outcomes[key] = ({r.number: r for r in results}, "\n".join(lines))
        return self._outcomes[key]

    def assertCheck(self, number: int) -> None:
        results, report = self.outcome()
        result = results[number]
        if not result.ok:
            raise self.failureException(f"{result.line()}\n\nwhole run:\n{report}")

    def test_check_1_qualified(self) -> None:
        self.assertCheck(1)

    def test_check_2_client1_pings_ipv6_host(self) -> None:
        self.assertCheck(2)

    def test_check_3_ipv6_host_pings_client1(self) -> None:
        self.assertCheck(3)

    def test_check_4_client1_pings_client2(self) -> None:
        self.assertCheck(4)

    def test_check_5_client2_pings_client1(self) -> None:
        self.assertCheck(5)

    def test_check_6_tcp_transfer(self) -> None:
        self.assertCheck(6)


class Client2ReachesIPv6Host(ScenarioChecks):
    """The six checks, then client 2 <-> the native IPv6 host both ways, in the same lab."""

    extra_checks: ClassVar[tuple[int, ...]] = (7, 8)

    def test_check_7_client2_pings_ipv6_host(self) -> None:
        self.assertCheck(7)

    def test_check_8_ipv6_host_pings_client2(self) -> None:
        self.assertCheck(8)
