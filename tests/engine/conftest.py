"""The engine tier: our model in vLLM's offline engine in this process (the session's `llm`,
or an engine of the test's own), against transformers and vLLM's built-in AF3."""

import pytest

from tests.support.tiers import mark_tier


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, __file__, pytest.mark.engine)
