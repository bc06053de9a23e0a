"""One timed pass of a workload against one endpoint, under one load shape."""

import asyncio
import time
from dataclasses import dataclass

import httpx
from tqdm import tqdm

from benchmarks.client import RequestRecord, send
from benchmarks.workload import Request


@dataclass(frozen=True)
class Endpoint:
    name: str  # "primary" or "compare"
    url: str
    model: str
    api_key: str | None

    @property
    def chat_url(self) -> str:
        return f"{self.url.rstrip('/')}/v1/chat/completions"

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclass(frozen=True)
class PassResult:
    records: list[RequestRecord]  # the requests that finished, in index order
    duration_s: float
    unfinished: int  # cut off by the deadline, in flight or never sent


def _client(timeout_s: float) -> httpx.AsyncClient:
    # No connection cap: a pool limit would queue requests inside the client and add the
    # wait to their measured latency.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(timeout=timeout_s, limits=limits)


async def run_pass(
    endpoint: Endpoint,
    requests: list[Request],
    offsets: list[float],
    max_concurrency: int | None,
    max_duration_s: float | None,
    stream: bool,
    timeout_s: float,
    label: str,
) -> PassResult:
    """Send request i at offsets[i] (later if `max_concurrency` are in flight); at
    `max_duration_s` cancel whatever has not finished."""
    slots = asyncio.Semaphore(max_concurrency or len(requests))
    progress = tqdm(total=len(requests), desc=label, unit="req")
    failed = 0
    async with _client(timeout_s) as client:
        start = time.perf_counter()

        async def one(request: Request, offset: float) -> RequestRecord:
            nonlocal failed
            await asyncio.sleep(start + offset - time.perf_counter())
            async with slots:
                record = await send(
                    client, endpoint.chat_url, endpoint.headers, request, stream, start
                )
            progress.update()
            if not record.ok:
                failed += 1
                progress.set_postfix(failed=failed)
            return record

        tasks = [asyncio.create_task(one(r, o)) for r, o in zip(requests, offsets, strict=True)]
        done, pending = await asyncio.wait(tasks, timeout=max_duration_s)
        duration = time.perf_counter() - start
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    progress.close()
    records = sorted((t.result() for t in done), key=lambda r: r.index)
    return PassResult(records, duration, len(pending))


async def warm_up(endpoint: Endpoint, request: Request, stream: bool, timeout_s: float) -> None:
    """One untimed request, so that a wrong URL, key or model stops the run at once and
    first-request costs stay out of the numbers."""
    async with _client(timeout_s) as client:
        record = await send(client, endpoint.chat_url, endpoint.headers, request, stream, 0.0)
    if not record.ok:
        raise RuntimeError(
            f"warm-up request to {endpoint.name} ({endpoint.chat_url}) failed: "
            f"HTTP {record.status}: {record.error}"
        )
