"""The unit tier: no engine and no HTTP app (settings, audio arithmetic, checkpoints and
their conversion, deployment files, the load tool's statistics); part of `make test-fast`."""

import pytest

from tests.support.tiers import mark_fast_tier


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_fast_tier(items, __file__, pytest.mark.unit)
