"""One path for every request that generates (chat and speech), forward only:

    admit -> prepare the inputs (client watched) -> engine -> answer or stream -> release

A client that leaves cancels the work, which aborts the engine requests; engine failures
become OpenAI-shaped errors (or, mid-stream, an error event); the admission is released
exactly once, however the request ends."""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request, WebSocket
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send
from vllm import SamplingParams
from vllm.entrypoints.generate.base.serving import SESSION_ID_HEADER
from vllm.exceptions import VLLMValidationError
from vllm.outputs import RequestOutput
from vllm.v1.engine.exceptions import EngineDeadError
from vllm.v1.metrics.stats import RequestStateStats

from af3_serve import metrics
from af3_serve.admission import Ticket
from af3_serve.edge.errors import APIError
from af3_serve.runtime import ENGINE_DEAD_MESSAGE, Runtime

T = TypeVar("T")

logger = logging.getLogger(__name__)


# Characters a JSON string may hold raw that Python's str.splitlines, and so httpx's
# `aiter_lines`, breaks lines at (SSE itself breaks only at CR and LF): escaped, the JSON's
# value is the same and no client cuts an event in two.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse(payload: str) -> str:
    """One server-sent event; `payload` is JSON (or [DONE])."""
    return f"data: {payload.translate(_LINE_BREAKS)}\n\n"


def engine_dead_error() -> APIError:
    return APIError(503, ENGINE_DEAD_MESSAGE, code="engine_dead")


class ServedRequest:
    """One API request that runs engine requests; `endpoint` labels its metrics."""

    def __init__(
        self,
        runtime: Runtime,
        request: Request | WebSocket,
        endpoint: str,
        session: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.request = request
        self.endpoint = endpoint
        self.arrival = runtime.clock()  # wall clock, as the engine's own timestamps
        self.ticket: Ticket | None = None
        # The conversation it belongs to, named by the client (X-Session-ID, as vLLM reads it)
        # or else by the server (`session`: a realtime conversation's).
        self.session = request.headers.get(SESSION_ID_HEADER) or session
        self._first_token_seen = False

    async def prepare(self, work: Callable[[Ticket], Awaitable[T]]) -> T:
        """Admit (503/429 before any work), then run `work` (fetch, decode, render) while
        watching the client."""
        self.ticket = self.runtime.admit(self.request.state.client)
        try:
            return await self._until_disconnect(work(self.ticket), self.endpoint + "_prepare")
        except BaseException:
            self.release()
            raise

    async def generate(
        self, engine_input: Any, params: SamplingParams, request_id: str, think: bool = False
    ) -> AsyncIterator[RequestOutput]:
        """The engine's outputs for one engine request; the request's first token is timed."""
        outputs = self.runtime.generate(engine_input, params, request_id, think, self.session)
        async for output in outputs:
            if not self._first_token_seen:
                self._first_token_seen = True
                first_token = _first_token_time(output, self.runtime.clock)
                metrics.TIME_TO_FIRST_TOKEN.observe(first_token - self.arrival)
            yield output

    async def answer(self, work: Awaitable[T]) -> T:
        """A whole answer: engine errors mapped, a disconnect aborts it, then released."""
        try:
            return await self._until_disconnect(_engine_errors(work), self.endpoint)
        finally:
            self.release()

    def stream(self, events: AsyncIterator[str], done: bool = True) -> StreamingResponse:
        """Server-sent events from `events` (JSON payloads); an engine that dies mid-stream
        gives an error event; chat streams end with `data: [DONE]` (`done`)."""
        return _ReleasingStream(self._frame(events, done), self.release)

    async def _frame(self, events: AsyncIterator[str], done: bool) -> AsyncIterator[str]:
        try:
            async for event in events:
                yield sse(event)
        except (asyncio.CancelledError, GeneratorExit):
            metrics.CLIENT_DISCONNECTS.labels(self.endpoint + "_stream").inc()
            raise
        except EngineDeadError:
            yield sse(engine_dead_error().body().model_dump_json())
        finally:
            self.release()
        if done:
            yield sse("[DONE]")

    def release(self) -> None:
        if self.ticket is not None:
            self.runtime.admission.release(self.ticket)

    async def _until_disconnect(self, work: Awaitable[T], endpoint: str) -> T:
        """Run `work`, cancelling it (and so aborting engine requests) if the client leaves."""
        if self.request.scope["type"] == "websocket":
            # A realtime session reads its own socket and cancels its turns' tasks when it
            # drops; reading it here would steal the session's events.
            return await work
        task = asyncio.ensure_future(work)

        async def disconnected() -> None:
            while (await self.request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()  # this request itself is cancelled: so is its work
            raise
        finally:
            watcher.cancel()
        if watcher.done() and not watcher.cancelled() and watcher.exception() is not None:
            # The server's receive failed (not the client's disconnect): logged, then
            # handled as a disconnect, since the request's socket is gone either way.
            logger.warning("reading a request's socket failed", exc_info=watcher.exception())
        if not task.done():
            task.cancel()
            metrics.CLIENT_DISCONNECTS.labels(endpoint).inc()
            raise APIError(499, "Client disconnected.")
        return task.result()


async def in_order(
    streams: list[AsyncIterator[RequestOutput]],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """The outputs of several engine requests, all running at once, handed out stream by
    stream (each stream's index with its outputs); an error in any is raised here, and
    leaving early aborts those still running."""
    queues: list[asyncio.Queue[RequestOutput | BaseException | None]] = [
        asyncio.Queue() for _ in streams
    ]

    async def pump(outputs: AsyncIterator[RequestOutput], queue: asyncio.Queue) -> None:
        try:
            async for out in outputs:
                await queue.put(out)
        except Exception as exc:  # e.g. the engine died: the consumer raises it
            await queue.put(exc)
        else:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(s, q)) for s, q in zip(streams, queues, strict=True)]
    try:
        for i, queue in enumerate(queues):
            while (out := await queue.get()) is not None:
                if isinstance(out, BaseException):
                    raise out
                yield i, out
    finally:
        for task in tasks:
            task.cancel()  # cancelling a pump aborts its engine request


async def last_output(outputs: AsyncIterator[RequestOutput]) -> RequestOutput:
    """The final output of an engine request collected whole."""
    final = None
    async for out in outputs:
        final = out
    assert final is not None
    return final


class _ReleasingStream(StreamingResponse):
    """Releases the admission when the response ends, also if its body never started (a
    client gone before the first byte never runs the body generator's cleanup)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def _engine_errors(work: Awaitable[T]) -> T:
    try:
        return await work
    except EngineDeadError as exc:
        raise engine_dead_error() from exc
    except (ValueError, VLLMValidationError) as exc:
        raise APIError(400, str(exc), code="invalid_request") from exc


def _first_token_time(output: RequestOutput, clock: Callable[[], float]) -> float:
    """When the engine produced the first token. An answer collected whole arrives once, at
    its end; the engine's stats still say when its first token came (else: now)."""
    stats = output.metrics
    if isinstance(stats, RequestStateStats) and stats.first_token_latency > 0:
        return stats.arrival_time + stats.first_token_latency
    return clock()
