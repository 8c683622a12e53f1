"""The package's import graph: no circles, no private names across modules, imports at the top.

Imports go down the flow (docs/layout.md): a module imported inside a function hides the real
graph, so the few that stay there (optional or costly third-party imports) carry a comment.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "keras_prune_guard"
NAME = "keras_prune_guard"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imported(node: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, names) for one import statement, package-internal ones only."""
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names if a.name.startswith(NAME)]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(NAME):
        # `from pkg.room import module` imports that module, not what the room's __init__ holds
        modules = [f"{node.module}.{a.name}" for a in node.names
                   if f"{node.module}.{a.name}" in MODULES]
        names = [a.name for a in node.names if f"{node.module}.{a.name}" not in MODULES]
        return [(m, []) for m in modules] + ([(node.module, names)] if names else [])
    return []


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            for module, _ in _imported(node):
                if module in MODULES and module != name:
                    edges.add(module)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_circle():
    graph = _graph()
    assert len(graph) > 40  # the walk found the package
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_circle_is_found_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            for module, names in _imported(node):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private and module != name:
                    offenders.append(f"{name} imports {private} from {module}")
    assert offenders == []


def _inner_imports(path: Path) -> list[tuple[int, str]]:
    """Imports inside functions with no comment on the line or above its import block."""
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import | ast.ImportFrom):
                line, above = lines[sub.lineno - 1], sub.lineno - 2
                while lines[above].strip().startswith(("import ", "from ")):
                    above -= 1  # a comment above an import block covers the block
                if "#" not in line and not lines[above].strip().startswith("#"):
                    found.append((sub.lineno, line.strip()))
    return found


def test_imports_inside_functions_say_why():
    offenders = {name: found for name, path in MODULES.items() if (found := _inner_imports(path))}
    assert offenders == {}
