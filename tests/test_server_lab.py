"""Our server with Miredo's relay and Miredo's clients: the six lab checks (needs root).

Skipped, with the reason, where the lab cannot run: not root, no network namespaces,
Miredo not installed (CI sets TEREDO_REQUIRE_LAB=1 to make that a failure instead).
"""

from __future__ import annotations

from twisted.trial import unittest

from teredo_lab.lab import MIREDO, OURS
from teredo_lab.scenario import Scenario
from tests.labsupport import ScenarioChecks


class OurServerWithMiredo(ScenarioChecks, unittest.TestCase):
    """`teredo-lab run --server ours --relay miredo --client miredo`."""

    scenario = Scenario(server=OURS, relay=MIREDO, client=MIREDO)
