"""The app in this process, on the fake engine, behind httpx's ASGI transport: the HTTP edge
(auth, limits, admission, errors, SSE framing, metrics) in milliseconds, no engine boot."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

from af3_serve.app import create_app
from af3_serve.config import parse_args
from af3_serve.engine import build_vllm_config
from af3_serve.model_files import resolve_model_files
from tests.support.fake_engine import FakeEngine, WallClock
from tests.support.server import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class InProcess:
    client: httpx.AsyncClient  # authenticated; headers={"Authorization": ""} goes without
    engine: FakeEngine
    app: FastAPI
    tmp: Path | None = None  # the folder `tests.support.http_helpers.server_fixture` gave it


@asynccontextmanager
async def in_process_server(
    checkpoint: Path,
    cache_dir: Path,
    *flags: str,
    step_s: float = 0.0,
    on_engine_dead: Callable[[], None] = lambda: None,
    clock: WallClock | None = None,
) -> AsyncIterator[InProcess]:
    """`flags` are af3-serve's command line after the model and API key; `on_engine_dead`
    stands for the process exit the CLI does once the engine died; `clock` (a StepClock:
    exact timings) is the fake engine's and the server's, in place of the wall clock."""
    argv = ["--model", str(checkpoint), "--api-key", API_KEY, "--dtype", "float32"]
    config = parse_args([*argv, "--cache-dir", str(cache_dir), *flags])
    files = resolve_model_files(config.model, config.think_adapter, config.cache_dir)
    engine = FakeEngine(build_vllm_config(config, files), step_s=step_s)
    if clock is not None:
        engine.clock = clock
    app = create_app(config, files, lambda: engine, on_engine_dead)
    async with app.router.lifespan_context(app):
        if clock is not None:
            app.state.runtime.clock = clock.time
        # As from a real server, the client gets what the app sent, also when the app raised
        # afterwards (tests that care check the log for "unhandled error").
        transport = httpx.ASGITransport(
            app=app, client=("127.0.0.1", 40000), raise_app_exceptions=False
        )
        async with httpx.AsyncClient(
            transport=transport, base_url="http://af3-serve", headers=AUTH, timeout=30
        ) as client:
            yield InProcess(client, engine, app)
