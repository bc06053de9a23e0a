"""The e2e tier: real af3-serve processes (and our other console scripts) over HTTP, one
server shared by the session; marked `engine` as tests/engine is: not `make test-fast`."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import API_KEY, PRIVATE_MEDIA_HOSTS, start_server
from tests.support.tiers import mark_tier


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, __file__, pytest.mark.engine, pytest.mark.e2e)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the test server may read file:// audio from."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def server(tiny_checkpoint: Path, media_dir: Path, tmp_path_factory) -> Iterator["object"]:
    """One real af3-serve process for the session: API key on, two requests at a time."""
    log = tmp_path_factory.mktemp("server") / "af3-serve.log"
    process = start_server(
        tiny_checkpoint,
        log,
        "--allowed-local-media-path",
        str(media_dir),
        "--max-request-bytes",
        str(48 * 2**20),
        "--max-pending-requests",
        "2",
        "--allowed-media-domains",
        *PRIVATE_MEDIA_HOSTS,
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def client(server) -> "object":
    """The official `openai` client on the session server."""
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture
def aclient(server) -> "object":
    """Per test: its connection pool belongs to the test's event loop."""
    import openai

    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
