"""The test tiers are folders (tests/unit, tests/http, tests/engine, tests/e2e): each one's
conftest.py marks the tests collected under it, so `-m` selects by tier as the folders do."""

from pathlib import Path

import pytest

# The one fixture of the root conftest.py that boots a vLLM engine (the e2e servers'
# fixtures live in tests/e2e/conftest.py, out of the fast tiers' reach).
ENGINE_FIXTURE = "llm"


def in_folder(items: list[pytest.Item], conftest: str) -> list[pytest.Item]:
    """The items under the folder of `conftest` (its `__file__`): pytest hands every
    conftest's pytest_collection_modifyitems all the items of the session."""
    folder = Path(conftest).resolve().parent
    return [item for item in items if item.path.resolve().is_relative_to(folder)]


def mark_tier(items: list[pytest.Item], conftest: str, *marks: pytest.MarkDecorator) -> None:
    """Give every test under the folder of `conftest` the tier's `marks`."""
    for item in in_folder(items, conftest):
        for mark in marks:
            item.add_marker(mark)


def mark_fast_tier(items: list[pytest.Item], conftest: str, mark: pytest.MarkDecorator) -> None:
    """As mark_tier, for a tier of `make test-fast`, which boots no engine: a test there
    that asks for one is refused at collection."""
    tier = in_folder(items, conftest)
    booting = [item.nodeid for item in tier if ENGINE_FIXTURE in getattr(item, "fixturenames", ())]
    if booting:
        folder = Path(conftest).parent.name
        raise pytest.UsageError(
            f"tests/{folder} boots no engine, but these ask for `{ENGINE_FIXTURE}` (move them "
            f"to tests/engine or tests/e2e): {', '.join(booting)}"
        )
    for item in tier:
        item.add_marker(mark)
