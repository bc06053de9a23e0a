"""Shared by the HTTP tests: af3-serve in-process on the fake engine as a fixture, request
bodies, the OpenAI error shape, /metrics samples and server-sent events."""

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import numpy as np
import pytest
import pytest_asyncio

from af3_model_executor.constants import DEFAULT_SERVED_MODEL_NAME
from tests.support.audio_files import audio_part, make_clip
from tests.support.fake_engine import FakeEngine
from tests.support.in_process import InProcess, in_process_server

MODEL = DEFAULT_SERVED_MODEL_NAME
THINK_MODEL = MODEL + "-think"
QUESTION = "What is said?"
CHAT = "/v1/chat/completions"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
NO_KEY = {"Authorization": ""}
# Tracebacks, source paths, and heap addresses (64-bit pointers print with 12 hex digits).
LEAK = re.compile(r"Traceback|File \"|0x[0-9a-fA-F]{10,}|/site-packages/")


def serve(
    checkpoint: Path, tmp_path: Path, *flags: str, **kwargs
) -> AbstractAsyncContextManager[InProcess]:
    """af3-serve in-process with `flags` (`{tmp}` in them is `tmp_path`), caching its
    prepared files under `tmp_path`; `kwargs` go to `in_process_server`."""
    argv = [flag.format(tmp=tmp_path) for flag in flags]
    return in_process_server(checkpoint, tmp_path / "af3-cache", *argv, **kwargs)


def server_fixture(*flags: str, scope: str = "function", **kwargs) -> Callable:
    """A fixture: af3-serve in-process with `flags`, one per test (or per module with
    scope="module", whose tests then need @pytest.mark.asyncio(loop_scope="module")), in the
    tests' event loop, so the app's background tasks (its engine watcher) run during them.
    `{tmp}` in the flags is a fresh folder (the test's tmp_path) holding a media/ folder."""

    @pytest_asyncio.fixture(scope=scope, loop_scope=scope)
    async def fixture(
        tiny_checkpoint: Path, request: pytest.FixtureRequest
    ) -> AsyncIterator[InProcess]:
        if scope == "function":
            tmp = request.getfixturevalue("tmp_path")
        else:
            tmp = request.getfixturevalue("tmp_path_factory").mktemp("in-process")
        (tmp / "media").mkdir(exist_ok=True)
        async with serve(tiny_checkpoint, tmp, *flags, **kwargs) as app:
            app.tmp = tmp
            yield app

    return fixture


# Request bodies -----------------------------------------------------------------------


def request(content: list | str, **extra) -> dict:
    """A chat request with one user message of `content`, two tokens unless `extra` says."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 2,
        **extra,
    }


def audio_request(audio: np.ndarray, fmt: str = "wav", **extra) -> dict:
    return request([audio_part(audio, fmt), {"type": "text", "text": QUESTION}], **extra)


def url_request(url: str, **extra) -> dict:
    return request([{"type": "audio_url", "audio_url": {"url": url}}], **extra)


def chat_body(speech: np.ndarray, seconds: float = 2.0, **extra) -> dict:
    """A question about `seconds` of real speech; no max_tokens unless `extra` gives one."""
    body = audio_request(make_clip(speech, seconds), **extra)
    if "max_tokens" not in extra:
        del body["max_tokens"]
    return body


def answer_text(engine: FakeEngine, tokens: int) -> str:
    """What the fake engine answers in `tokens` tokens (its ANSWER, repeated)."""
    return engine.tokenizer.decode(
        list(itertools.islice(itertools.cycle(engine.answer_ids), tokens))
    )


# Checks -------------------------------------------------------------------------------


def assert_clean(response: httpx.Response) -> None:
    """No internals in the body; an error has OpenAI's shape."""
    assert not LEAK.search(response.text), response.text[:500]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}


def assert_error(
    response: httpx.Response, status: int, param: str | None = None, code: str | None = None
) -> dict:
    """An OpenAI-shaped error of `status`; `param` and `code` are checked when given."""
    assert response.status_code == status, response.text[:500]
    assert_clean(response)
    error = response.json()["error"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def metric(text: str, series: str, default: float | None = None) -> float:
    """One series' value on a /metrics page (`name{labels}` exactly as Prometheus prints);
    `default` for a series not there (yet)."""
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    if match is None and default is not None:
        return default
    assert match, f"{series} is not on /metrics"
    return float(match.group(1))


async def metrics_page(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


def sse_data(response: httpx.Response) -> list[str]:
    """The payload of each server-sent event, checking the framing: one `data: ` line per
    event, events separated by a blank line."""
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\n"), response.text[-200:]
    events = response.text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e.removeprefix("data: ") for e in events]


async def until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)
