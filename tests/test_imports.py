"""No import circle between the project's modules, counting every import: at the top,
inside functions and under TYPE_CHECKING (a circle there still couples the two modules)."""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("teredo_appliance", "teredo_lab")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in it; `from pkg import mod` names mod."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [path for package in PACKAGES for path in (REPO / package).rglob("*.py")]
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) - {module_name(path)} for path in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


class ImportCycleTests(SynchronousTestCase):
    def test_no_module_imports_itself_through_others(self) -> None:
        self.assertEqual(cycles(import_graph()), [])

    def test_the_checker_sees_imports_under_type_checking_and_in_functions(self) -> None:
        graph = import_graph()
        self.assertIn("teredo_appliance.view", graph["teredo_appliance.console"])  # TYPE_CHECKING only
        self.assertIn("teredo_appliance.admin", graph["teredo_appliance.appliance"])  # inside a method
        self.assertEqual(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}), [["a", "b", "c"]])

    def test_wire_imports_nothing_but_wire(self) -> None:
        graph = import_graph()
        for module, imported in graph.items():
            if module.startswith("teredo_appliance.wire"):
                self.assertEqual({m for m in imported if not m.startswith("teredo_appliance.wire")}, set(), module)

    def test_no_machine_and_nothing_in_wire_imports_twisted(self) -> None:
        """The sans-I/O core: fed (input, now), it never touches a reactor, a logger or a socket."""
        pure = [*(REPO / "teredo_appliance" / "wire").glob("*.py"),
                *(REPO / "teredo_appliance" / "roles").glob("*_machine.py"),
                *(REPO / "teredo_appliance" / "roles").glob("client_[df]*.py"),
                *(REPO / "teredo_appliance" / "roles" / name
                  for name in ("client_local.py", "client_symmetric.py", "nat_behaviour.py")),
                REPO / "teredo_appliance" / "peers.py", REPO / "teredo_appliance" / "ratelimit.py",
                REPO / "teredo_appliance" / "announcement.py"]
        self.assertGreaterEqual(len(pure), 17)
        for path in pure:
            tops = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Import) for alias in node.names}
            tops |= {node.module.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.ImportFrom) and node.module}
            self.assertNotIn("twisted", tops, path.name)
