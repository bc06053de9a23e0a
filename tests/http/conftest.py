"""The HTTP tier: af3-serve's app in this process on the fake engine
(tests/support/fake_engine.py), behind httpx's ASGI transport: no vLLM engine boots; part of
`make test-fast`."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.in_process import InProcess, in_process_server
from tests.support.tiers import mark_fast_tier


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_fast_tier(items, __file__, pytest.mark.http)


# In the test's own event loop, so that the app's background tasks (the engine watcher)
# run while the test awaits.
@pytest_asyncio.fixture(loop_scope="function")
async def http(tiny_checkpoint: Path, tmp_path_factory) -> AsyncIterator[InProcess]:
    """af3-serve in this process on the fake engine, default flags."""
    async with in_process_server(tiny_checkpoint, tmp_path_factory.mktemp("af3-cache")) as app:
        yield app
