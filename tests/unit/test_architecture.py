"""The layout's rules (docs/architecture.md), read from the code itself: every import counts,
inside functions and under TYPE_CHECKING too."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("cifar_lit", "flows", "tasks")
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, name: str, is_package: bool) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.append(base)
            found += [f"{base}.{a.name}" for a in node.names]  # "from pkg import module"
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path, name, path.name == "__init__.py"):
            # The module itself, else the longest project module it names (a name inside it).
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_package_is_rooms_with_at_most_eight_modules_at_the_top_and_none_over_450_lines():
    top = sorted(p.name for p in (REPO / "cifar_lit").glob("*.py"))
    assert len(top) <= 8, top
    long = {str(p.relative_to(REPO)): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_the_library_imports_no_prefect_and_nothing_private_of_another_library():
    graph_imports = {name: _imports(path, name, path.name == "__init__.py") for name, path in _modules().items()}
    prefect = {name for name, found in graph_imports.items()
               if name.startswith("cifar_lit") and any(i == "prefect" or i.startswith("prefect.") for i in found)}
    assert prefect == set(), f"cifar_lit imports Prefect in {sorted(prefect)}"
    private = {(name, i) for name, found in graph_imports.items() for i in found
               if not i.startswith(PACKAGES) and any(part.startswith("_") and part != "__future__" for part in i.split("."))}
    assert private == set(), f"private imports: {sorted(private)}"
