"""The test suite's own layout: every test module in a tier folder, helpers in tests/support,
and no test module or conftest.py imported by anything (what tests share is in support)."""

import ast
from pathlib import Path

from tests.support.paths import ROOT

TESTS = ROOT / "tests"
TIERS = ("unit", "http", "engine", "e2e")


def test_every_test_module_is_in_a_tier_folder() -> None:
    modules = {p.relative_to(TESTS).parts[0] for p in TESTS.rglob("test_*.py")}
    assert modules <= set(TIERS), modules
    for tier in TIERS:
        assert (TESTS / tier / "conftest.py").is_file() and (TESTS / tier / "__init__.py").is_file()
    assert (TESTS / "support" / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """The modules a file's import statements name (`from tests.x import y` names tests.x
    and tests.x.y); a relative import as `.` and its module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_nothing_imports_a_test_module_or_a_conftest() -> None:
    offenders = {
        str(path.relative_to(TESTS)): sorted(
            name
            for name in imports(path)
            if name.startswith(".")
            or (name.startswith("tests.") and not name.startswith("tests.support."))
        )
        for path in TESTS.rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}
