"""Our relay between Miredo's server and Miredo's clients: the six lab checks (needs root).

Skipped, with the reason, where the lab cannot run: not root, no network namespaces,
Miredo not installed.
"""

from __future__ import annotations

from twisted.trial import unittest

from teredo_lab.lab import MIREDO, OURS
from teredo_lab.scenario import Scenario
from tests.labsupport import ScenarioChecks


class OurRelayWithMiredo(ScenarioChecks, unittest.TestCase):
    """`teredo-lab run --server miredo --relay ours --client miredo`."""

    scenario = Scenario(server=MIREDO, relay=OURS, client=MIREDO)
