"""Past one engine: vLLM's data-parallel engines behind one af3-serve, and replicas behind
vLLM's router (vllm-router), which keeps each conversation on the replica that holds its
cached audio when the client names the conversation (X-Session-ID)."""

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from af3_bench.stats import prefix_hit
from af3_model_executor.constants import DEFAULT_SERVED_MODEL_NAME as MODEL
from af3_serve.tools.common import session_headers
from benchmarks import harness
from tests.support.audio_files import audio_part, make_clip
from tests.support.server import API_KEY, start_server

pytestmark = pytest.mark.slow


def counter(url: str, name: str) -> dict[str, float]:
    """A vLLM counter's value per engine (label `engine`)."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    values: dict[str, float] = {}
    for labels, value in re.findall(rf"^{re.escape(name)}\{{(.*?)\}} (\S+)$", text, re.M):
        engine = re.search(r'engine="(\d+)"', labels)[1]
        values[engine] = values.get(engine, 0.0) + float(value)
    return values


def served(url: str) -> dict[str, float]:
    return counter(url, "vllm:request_success_total")


@pytest.fixture(scope="module")
def dp_server(tiny_checkpoint: Path, tmp_path_factory) -> Iterator[harness.Server]:
    """af3-serve with two data-parallel engines (vLLM balances between them)."""
    log = tmp_path_factory.mktemp("dp") / "af3-serve.log"
    server = start_server(tiny_checkpoint, log, "--data-parallel-size", "2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def router(server, dp_server, tmp_path_factory) -> Iterator[harness.Server]:
    """vLLM's router over two replicas: the session server and the data-parallel one."""
    log = tmp_path_factory.mktemp("router") / "vllm-router.log"
    router = harness.launch_vllm_router([server.url, dp_server.url], log)
    yield router.wait_healthy(timeout_s=120)
    router.stop()


async def test_data_parallel_engines_share_the_requests(dp_server, speech: np.ndarray) -> None:
    before = served(dp_server.url)
    assert set(before) == {"0", "1"}, "two engines export their metrics"
    client = openai.AsyncOpenAI(base_url=f"{dp_server.url}/v1", api_key=API_KEY, max_retries=0)
    # Long enough answers (ignore_eos) that the eight overlap in the engines: vLLM's balancer
    # spreads what is in flight; requests that each ended before the next arrived could all
    # meet an idle engine 0 in a stale load snapshot.
    replies = await asyncio.gather(
        *(
            client.chat.completions.create(
                model=MODEL,
                max_tokens=32,
                extra_body={"ignore_eos": True},
                messages=[{"role": "user", "content": [audio_part(make_clip(speech, 3 + i))]}],
            )
            for i in range(8)
        )
    )
    assert all(r.usage.completion_tokens == 32 for r in replies)
    after = served(dp_server.url)
    assert sum(after.values()) - sum(before.values()) == 8
    assert all(after[e] > before[e] for e in ("0", "1")), (before, after)


async def conversation(client: openai.AsyncOpenAI, clip: np.ndarray, turns: int) -> list:
    """Turns about one audio, the history resent each time, as an OpenAI client does."""
    headers = session_headers()
    messages = [{"role": "user", "content": [audio_part(clip), {"type": "text", "text": "Q1"}]}]
    usages = []
    for turn in range(turns):
        reply = await client.chat.completions.create(
            model=MODEL, max_tokens=4, messages=messages, extra_headers=headers
        )
        usages.append(reply.usage)
        messages += [
            {"role": "assistant", "content": reply.choices[0].message.content},
            {"role": "user", "content": f"Q{turn + 2}"},
        ]
    return usages


async def test_the_router_keeps_each_conversation_on_its_replica(
    router, server, dp_server, speech: np.ndarray
) -> None:
    """Six conversations of three turns through the router (which also adds its own fields
    to every body): each later turn finds its audio in the prefix cache, and both replicas
    got conversations."""
    before = {r.url: sum(served(r.url).values()) for r in (server, dp_server)}
    client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key=API_KEY, max_retries=0)
    slots = asyncio.Semaphore(2)  # the session server admits two requests at a time

    async def one(i: int) -> list:
        async with slots:
            return await conversation(client, make_clip(speech, 20 + i), 3)

    results = await asyncio.gather(*(one(i) for i in range(6)))
    later = [usage for usages in results for usage in usages[1:]]
    details = [u.prompt_tokens_details for u in later]
    assert all(prefix_hit(d.cached_tokens, d.audio_tokens) for d in details), details
    gained = {r.url: sum(served(r.url).values()) - before[r.url] for r in (server, dp_server)}
    assert sum(gained.values()) == 18 and all(n >= 3 for n in gained.values()), gained
