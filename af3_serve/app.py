"""The FastAPI application: middleware, the routers, the small routes (models, health,
version, metrics) and the engine's life."""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import vllm
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from vllm.engine.protocol import EngineClient

from af3_model_executor import ARCHITECTURE
from af3_serve import __version__, metrics
from af3_serve.chat.router import router as chat_router
from af3_serve.chat.setup import ChatSetup
from af3_serve.completions.router import router as completions_router
from af3_serve.config import ServerConfig
from af3_serve.demo import mount_demo_page
from af3_serve.edge.auth import require_api_key, require_api_key_if_protected
from af3_serve.edge.errors import install_error_handlers
from af3_serve.edge.limits import BodyLimits
from af3_serve.edge.request_log import RequestLog
from af3_serve.model_cards import ModelList
from af3_serve.model_files import ModelFiles
from af3_serve.realtime.router import router as realtime_router
from af3_serve.responses.router import router as responses_router
from af3_serve.responses.store import ResponseStore
from af3_serve.runtime import Runtime, get_runtime
from af3_serve.speech.router import TRANSCRIPTION_PATHS
from af3_serve.speech.router import router as speech_router
from af3_serve.tokenize.router import router as tokenize_router

logger = logging.getLogger("af3_serve")


async def _watch_engine(runtime: Runtime, on_engine_dead: Callable[[], None]) -> None:
    while not runtime.engine.errored:
        await asyncio.sleep(0.5)
    runtime.mark_engine_dead()
    grace = runtime.config.engine_death_grace_s
    logger.error("the vLLM engine died; /health answers 503, exiting in %.0f s", grace)
    # A short window in which probes and load balancers see 503 and in-flight requests
    # get their errors, then a non-zero exit for the supervisor to restart us.
    await asyncio.sleep(grace)
    on_engine_dead()


def create_app(
    config: ServerConfig,
    files: ModelFiles,
    start_engine: Callable[[], EngineClient],
    on_engine_dead: Callable[[], None] = lambda: None,
) -> FastAPI:
    """`start_engine` gives the engine when the app starts (vLLM's `AsyncLLM` in the server,
    a fake in the HTTP tests); `on_engine_dead` is told when it dies, so the process can
    exit non-zero."""
    metrics.initialise_labels()
    lifespan = _lifespan(config, files, start_engine, on_engine_dead)
    app = FastAPI(title="af3-serve", version=__version__, lifespan=lifespan)
    app.add_middleware(
        BodyLimits,
        max_bytes=config.max_request_bytes,
        read_timeout_s=config.request_read_timeout_s,
        path_max_bytes=dict.fromkeys(TRANSCRIPTION_PATHS, config.max_transcription_bytes),
    )
    app.add_middleware(RequestLog)
    install_error_handlers(app)
    app.state.responses = ResponseStore(config.responses_store_mib * 2**20)
    app.include_router(chat_router)
    app.include_router(completions_router)
    app.include_router(responses_router)
    app.include_router(realtime_router)
    app.state.realtime_sessions = 0
    app.state.realtime_sessions_per_client = {}
    app.include_router(speech_router)
    app.include_router(tokenize_router)
    app.include_router(_service_routes(config))
    if config.demo_page:
        mount_demo_page(app)
    return app


def _lifespan(
    config: ServerConfig,
    files: ModelFiles,
    start_engine: Callable[[], EngineClient],
    on_engine_dead: Callable[[], None],
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The engine's life: started with the app, watched while it serves, shut down after."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if files.is_tiny:
            logger.warning(
                "%s holds RANDOM weights from af3-tiny-checkpoint: answers are "
                "noise; use it to try the API, not the model",
                files.model_dir,
            )
        runtime = Runtime(config, start_engine(), files)
        app.state.runtime = runtime
        app.state.chat = ChatSetup.build(runtime)
        watcher = asyncio.create_task(_watch_engine(runtime, on_engine_dead))
        try:
            yield
        finally:
            watcher.cancel()
            await runtime.aclose()

    return lifespan


def _service_routes(config: ServerConfig) -> APIRouter:
    """The small routes: models, health, version, metrics."""
    router = APIRouter()

    @router.get("/v1/models", dependencies=[Depends(require_api_key)])
    async def models(request: Request) -> ModelList:
        return get_runtime(request).models.cards()

    @router.get("/health")
    async def health(request: Request) -> JSONResponse:
        runtime = get_runtime(request)
        if runtime.engine_dead or runtime.engine.errored:
            return JSONResponse({"status": "engine_dead"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @router.get("/version", dependencies=[Depends(require_api_key_if_protected)])
    async def version_info() -> dict[str, str]:
        return {
            "af3_serve": __version__,
            "vllm": vllm.__version__,
            "model": config.model,
            "served_model_name": config.served_model_name,
            "model_class": ARCHITECTURE,
        }

    @router.get("/metrics", dependencies=[Depends(require_api_key_if_protected)])
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
