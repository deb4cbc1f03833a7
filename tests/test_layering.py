"""The four packages of the training side stay layered: no import circle between them.

``api/`` (the specs) imports none of ``data/``, ``master/``, ``runtime/``; among the
four, the graph of package-level imports has no cycle. Imports are read with ``ast``
from the sources (also those under ``if TYPE_CHECKING:`` and inside functions: a lazy
import is still a dependency), so a failure names the file, the line and the import.
"""

from __future__ import annotations

import ast
import importlib
import itertools
from pathlib import Path

import pytest

import tidemill

ROOT = Path(tidemill.__file__).parent
PACKAGES = ("api", "data", "master", "runtime")
Edge = tuple[str, str, str]
"""(importing package, imported package, where: ``path:line: import ...``)."""


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tidemill":  # from tidemill import data
                found += [(node.lineno, f"tidemill.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "tidemill" and parts[1] in PACKAGES:
        return parts[1]
    return None


def edges() -> list[Edge]:
    found: list[Edge] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in imported_modules(path):
                target = package_of(module)
                if target is not None and target != package:
                    where = f"{path.relative_to(ROOT.parent)}:{line}: imports {module}"
                    found.append((package, target, where))
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path of nodes, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_imports(package: str) -> None:
    importlib.import_module(f"tidemill.{package}")


def test_api_imports_none_of_data_master_runtime() -> None:
    offending = [where for source, _, where in edges() if source == "api"]
    assert not offending, "api/ must stay the bottom layer:\n" + "\n".join(offending)


def test_there_is_no_import_cycle_between_api_data_master_runtime() -> None:
    found = edges()
    graph: dict[str, set[str]] = {}
    for source, target, _ in found:
        graph.setdefault(source, set()).add(target)
    loop = cycle(graph)
    if loop is not None:
        pairs = set(itertools.pairwise(loop))
        lines = [where for source, target, where in found if (source, target) in pairs]
        pytest.fail("import cycle " + " -> ".join(loop) + ":\n" + "\n".join(lines))


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_layering() -> None:
    assert cycle({"data": {"api", "runtime"}, "master": {"data"}, "runtime": set()}) is None
    assert cycle({"data": {"runtime"}, "runtime": {"master"}, "master": {"data"}}) == [
        "data",
        "runtime",
        "master",
        "data",
    ]
