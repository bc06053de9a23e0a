"""Engine work that ends with its client: a disconnect cancels the work (and so aborts
the engine request), and engine failures become OpenAI-shaped errors."""

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from vllm.exceptions import VLLMValidationError
from vllm.v1.engine.exceptions import EngineDeadError

from af3_serve import metrics
from af3_serve.errors import APIError

T = TypeVar("T")


async def until_disconnect(request: Request, work: Awaitable[T], endpoint: str) -> T:
    """Run `work`, cancelling it (and so aborting the engine request) if the client leaves."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        metrics.CLIENT_DISCONNECTS.labels(endpoint).inc()
        raise APIError(499, "Client disconnected.")
    return task.result()


async def engine_errors(work: Awaitable[T]) -> T:
    try:
        return await work
    except EngineDeadError as exc:
        raise APIError(
            503, "The engine stopped while serving this request.", code="engine_dead"
        ) from exc
    except (ValueError, VLLMValidationError) as exc:
        raise APIError(400, str(exc), code="invalid_request") from exc
