"""What a plain install ships: the twistd plugin (the `packages = find:` trap) and every module.

The other twistd tests run on the checkout; these prove the installed artefact itself.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "twisted/plugins/teredo_appliance_plugin.py"
ROLE_PLUGINS = "twisted/plugins/teredo_roles.py"
PACKAGES = ("teredo_appliance", "teredo_lab")


class WheelTests(SynchronousTestCase):
    def test_wheel_ships_the_plugin_and_every_module(self) -> None:
        # From a clean copy: setuptools reuses a checkout's build/lib, whose stale files
        # would hide exactly the packaging mistakes this test is for.
        source = Path(self.mktemp()) / "src"
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "_trial_temp*", "__pycache__", ".hypothesis", "*.so"))
        out = Path(self.mktemp())
        out.mkdir()
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
            capture_output=True, text=True, timeout=300, check=False,
        )
        self.assertEqual(build.returncode, 0, build.stderr)
        [wheel] = out.glob("teredo_appliance-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
        self.assertIn(PLUGIN, names)
        self.assertIn(ROLE_PLUGINS, names)
        self.assertFalse([name for name in names if name.endswith("dropin.cache")])
        self.assertFalse([name for name in names if name.startswith("tests/")])
        modules = {str(path.relative_to(REPO)) for package in PACKAGES for path in (REPO / package).rglob("*.py")}
        self.assertEqual(modules - names, set())
        if shutil.which("cc"):  # the optional C extension is built wherever it can be
            self.assertTrue([name for name in names if name.startswith("teredo_appliance/_offload.")
                             and name.endswith(".so")], sorted(names))


class InstalledTwistdTests(SynchronousTestCase):
    def test_installed_twistd_lists_teredo_without_the_checkout(self) -> None:
        """Run from elsewhere with no PYTHONPATH: only what is installed in the venv counts."""
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        result = subprocess.run([twistd, "--help"], cwd="/", env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"\n\s+teredo\s+Teredo server, relay and client roles")

    def test_installed_role_plugins_without_the_checkout(self) -> None:
        """getPlugins(ITeredoRole) from what pip installed, run from / with no PYTHONPATH."""
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        script = ("import sys, teredo_appliance; from teredo_appliance.plugin import role_plugins;"
                  "print(teredo_appliance.__file__); print(' '.join(role_plugins()))")
        result = subprocess.run([sys.executable, "-c", script], cwd="/", env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        where, names = result.stdout.splitlines()
        self.assertFalse(where.startswith(str(REPO) + "/teredo_appliance"), where)
        self.assertEqual(names, "server relay client")

    def test_installed_checkconf_reports_the_version_from_the_metadata(self) -> None:
        """The version is written once (pyproject.toml) and read back from what pip installed."""
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        checkconf = os.path.join(os.path.dirname(sys.executable), "teredo-checkconf")
        result = subprocess.run([checkconf, "--version"], cwd="/", env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        self.assertEqual(result.stdout.strip(), f"teredo-checkconf {project['version']}")


def _normalised(distribution: str) -> str:
    """PEP 503: prometheus_client and prometheus-client name one distribution."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


class DeclaredDependencyTests(SynchronousTestCase):
    def test_every_third_party_import_is_a_declared_dependency(self) -> None:
        """An import the metadata does not declare works on a dev box and breaks a clean install."""
        declared = {_normalised(re.split(r"[<>=\[ ;]", spec)[0])
                    for spec in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
        distributions = packages_distributions()
        imported = set()
        sources = [path for package in PACKAGES for path in (REPO / package).rglob("*.py")]
        for path in [*sources, *(REPO / "twisted" / "plugins").glob("*.py")]:
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                         else [])
                imported.update(name.split(".")[0] for name in names)
        third_party = {top for top in imported - set(sys.stdlib_module_names) - set(PACKAGES)}
        undeclared = {top: distributions.get(top) for top in third_party
                      if not {_normalised(d) for d in distributions.get(top, [top])} & declared}
        self.assertEqual(undeclared, {})
