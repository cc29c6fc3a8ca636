"""The house's import rules (docs/architecture.md): no import circle between modules, counting the
imports written inside functions, and nothing of the plugin imported by its leaves."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_promptopt"
LEAVES = ("redact", "stats", "gates", "hookspecs", "records")


def _imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at the top or inside functions)."""
    graph: dict[str, set[str]] = {}
    for file in PACKAGE.rglob("*.py"):
        parts = list(file.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        package = module if is_package else module.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                found.update([target] if node.module else [f"{target}.{alias.name}" for alias in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pytest_promptopt"):
                found.add(str(node.module))
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("pytest_promptopt"))
        graph[module] = found
    # `from . import x` names a module or a name in the package: keep the modules that exist
    return {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back_through_others():
    graph = _imports()
    cycles = _cycles(graph)
    assert not cycles, "import circles (imports inside functions included): " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_the_leaves_import_nothing_of_the_plugin_but_other_leaves():
    graph = _imports()
    leaves = {f"pytest_promptopt.{name}" for name in LEAVES}
    for leaf in leaves:
        assert graph[leaf] <= leaves, f"{leaf} imports {sorted(graph[leaf] - leaves)}"


def test_the_cycle_check_finds_a_circle():
    # The check itself must be able to fail.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
