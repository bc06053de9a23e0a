"""The package layering is what the folders suggest: within af3_serve, no part (a
subpackage or a top-level module) imports, directly or through others, a part that imports
it back; the model executor never imports the server. Read from the source's import
statements (also those inside functions), so no module is imported to check."""

import ast
from pathlib import Path

from tests.support.paths import ROOT

SERVER = ROOT / "af3_serve"
EXECUTOR = ROOT / "model_executor"


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name an `import` or `from ... import` statement of the file
    names (`from af3_serve import metrics` names af3_serve.metrics too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def part_of(module: str) -> str | None:
    """The part of af3_serve a module name belongs to: af3_serve.chat.router -> chat,
    af3_serve.metrics -> metrics; None outside af3_serve (and for the package itself)."""
    pieces = module.split(".")
    return pieces[1] if pieces[0] == "af3_serve" and len(pieces) > 1 else None


def server_parts(server: Path = SERVER) -> dict[str, set[str]]:
    """Each part of af3_serve (a subpackage or a top-level module) and the other parts it
    imports."""
    parts = {p.stem for p in server.glob("*.py")} | {
        p.parent.name for p in server.glob("*/__init__.py")
    }
    parts.discard("__init__")
    graph: dict[str, set[str]] = {part: set() for part in parts}
    for path in server.rglob("*.py"):
        part = path.relative_to(server).parts[0].removesuffix(".py")
        if part in parts:
            graph[part] |= {part_of(m) for m in imported_modules(path)} & parts - {part}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, as the parts along it, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if found := visit(nxt, [*path, node]):
                return found
        done.add(node)
        return None

    return next((c for node in sorted(graph) if (c := visit(node, []))), None)


def test_cycle_finds_a_pair_and_a_longer_loop() -> None:
    assert cycle({"a": {"b"}, "b": set()}) is None
    assert cycle({"chat": {"inputs"}, "inputs": {"chat"}}) == ["chat", "inputs", "chat"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_parts_of_af3_serve_import_each_other_one_way() -> None:
    graph = server_parts()
    assert {"chat", "speech", "inputs", "edge", "tools", "protocol", "serving"} <= set(graph)
    assert "inputs" in graph["chat"]  # the reading of imports sees the real graph
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


def test_the_model_executor_never_imports_the_server() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if m.startswith("af3_serve")
        )
        for path in EXECUTOR.rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}
