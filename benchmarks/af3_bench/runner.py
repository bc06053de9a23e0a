"""One timed pass of a workload against one endpoint, under one load shape."""

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from tqdm import tqdm

from af3_bench.client import RequestRecord, send
from af3_bench.server_metrics import cache_delta, read_counters
from af3_bench.workload import Conversation, Request
from af3_serve.tools.common import SESSION_HEADER


@dataclass(frozen=True)
class Endpoint:
    name: str  # "primary" or "compare"
    url: str
    model: str
    api_key: str | None
    # Where the engine's cache counters are read: the server's own /metrics by default;
    # behind a load balancer, each replica's.
    replica_metrics: tuple[str, ...] = ()

    @property
    def metrics_urls(self) -> tuple[str, ...]:
        return self.replica_metrics or (f"{self.url.rstrip('/')}/metrics",)

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclass(frozen=True)
class PassResult:
    records: list[RequestRecord]  # the requests that finished, by conversation and turn
    duration_s: float
    # Cut off by the deadline, in flight or never sent; or a later turn of a conversation
    # whose earlier turn failed, which cannot be built without that turn's answer.
    unfinished: int
    cache: dict[str, Any] | None  # vLLM's cache counters over the pass; None if unreadable
    # The same per replica, when several metrics URLs are read.
    cache_by_replica: dict[str, dict[str, Any] | None] | None = None


def _client(timeout_s: float) -> httpx.AsyncClient:
    # No connection cap: a pool limit would queue requests inside the client and add the
    # wait to their measured latency.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(timeout=timeout_s, limits=limits)


async def run_pass(
    endpoint: Endpoint,
    conversations: list[Conversation],
    offsets: list[float],
    max_concurrency: int | None,
    max_duration_s: float | None,
    stream: bool,
    timeout_s: float,
    label: str,
) -> PassResult:
    """Start conversation i at offsets[i] (later if `max_concurrency` are in flight) and
    send its turns one after another, each once the previous answer is in; a conversation
    holds its concurrency slot through all its turns, as one user would. At
    `max_duration_s` cancel whatever has not finished."""
    slots = asyncio.Semaphore(max_concurrency or len(conversations))
    total = sum(len(c.questions) for c in conversations)
    progress = tqdm(total=total, desc=label, unit="req")
    records: list[RequestRecord] = []
    failed = 0
    async with _client(timeout_s) as client:
        urls = endpoint.metrics_urls
        before = [await read_counters(client, url, endpoint.headers) for url in urls]
        # Every turn of a conversation names it, for session-affinity load balancers.
        run_id = uuid.uuid4().hex[:12]
        start = time.perf_counter()

        async def talk(conversation: Conversation, offset: float) -> None:
            nonlocal failed
            await asyncio.sleep(start + offset - time.perf_counter())
            answers: list[str] = []
            headers = endpoint.headers | {SESSION_HEADER: f"{run_id}-{conversation.index}"}
            async with slots:
                for _ in conversation.questions:
                    request = conversation.request(answers)
                    record = await send(client, endpoint.url, headers, request, stream, start)
                    records.append(record)
                    progress.update()
                    if not record.ok:
                        failed += 1
                        progress.set_postfix(failed=failed)
                        return
                    answers.append(record.answer)

        tasks = [
            asyncio.create_task(talk(c, o)) for c, o in zip(conversations, offsets, strict=True)
        ]
        _, pending = await asyncio.wait(tasks, timeout=max_duration_s)
        duration = time.perf_counter() - start
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        after = [await read_counters(client, url, endpoint.headers) for url in urls]
    progress.close()
    records.sort(key=lambda r: (r.index, r.turn))
    deltas = {
        url: cache_delta(b, a) if b is not None and a is not None else None
        for url, b, a in zip(urls, before, after, strict=True)
    }
    cache = None
    if all(b is not None for b in before) and all(a is not None for a in after):
        cache = cache_delta(_summed(before), _summed(after))
    by_replica = deltas if len(urls) > 1 else None
    return PassResult(records, duration, total - len(records), cache, by_replica)


def _summed(readings: list[dict[str, float]]) -> dict[str, float]:
    """Counters summed over replicas; a counter counts only where every replica has it."""
    names = set.intersection(*(set(r) for r in readings))
    return {name: sum(r[name] for r in readings) for name in names}


async def warm_up(endpoint: Endpoint, request: Request, stream: bool, timeout_s: float) -> None:
    """One untimed request, so that a wrong URL, key or model stops the run at once and
    first-request costs stay out of the numbers."""
    async with _client(timeout_s) as client:
        record = await send(client, endpoint.url, endpoint.headers, request, stream, 0.0)
    if not record.ok:
        raise RuntimeError(
            f"warm-up request to {endpoint.name} ({endpoint.url}{request.path}) failed: "
            f"HTTP {record.status}: {record.error}"
        )
