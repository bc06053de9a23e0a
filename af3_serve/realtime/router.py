"""GET /v1/realtime, OpenAI's Realtime API over a WebSocket: the key checked (the
Authorization header, or the subprotocol browsers send), the session limit, then the
session's events until the socket closes, with one access-log line per session."""

import asyncio
import logging
import time

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from af3_serve import metrics
from af3_serve.edge.auth import client_name
from af3_serve.edge.errors import APIError
from af3_serve.realtime.protocol import ErrorEvent
from af3_serve.realtime.session import RealtimeSession
from af3_serve.runtime import Runtime

router = APIRouter()
logger = logging.getLogger("af3_serve.access")
# Browsers cannot set headers on a WebSocket: OpenAI's clients send the key as a subprotocol.
KEY_PROTOCOL = "openai-insecure-api-key."
POLICY_VIOLATION, TRY_AGAIN_LATER = 1008, 1013


def _token(websocket: WebSocket) -> str | None:
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token
    for protocol in websocket.scope.get("subprotocols", []):
        if protocol.startswith(KEY_PROTOCOL):
            return protocol[len(KEY_PROTOCOL) :]
    return None


async def _over_limit(websocket: WebSocket, reason: str, status: int, message: str) -> None:
    """A session past a session limit: counted as refused for `reason`, told, closed."""
    metrics.REJECTED.labels(reason).inc()
    error = APIError(status, message, code="session_limit_reached")
    await _refuse(websocket, error, TRY_AGAIN_LATER)


async def _refuse(websocket: WebSocket, error: APIError, code: int) -> None:
    """A refused connection still hears why, as an OpenAI `error` event, then closes."""
    metrics.REALTIME_ERRORS.labels(error.code or "error").inc()
    await websocket.send_text(ErrorEvent.of(error).model_dump_json())
    await websocket.close(code)


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    runtime: Runtime = websocket.app.state.runtime
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
    start = time.perf_counter()
    try:
        websocket.state.client = client_name(websocket, _token(websocket))
        query = websocket.query_params
        kind = "transcription" if query.get("intent") == "transcription" else "realtime"
        model = query.get("model") or runtime.models.base
        if runtime.models.is_think(model) and kind == "transcription":
            model = runtime.models.base  # transcription uses the base model, as on REST
        if runtime.engine_dead:
            raise APIError(503, "The engine is not running.", code="engine_dead")
    except APIError as exc:
        await _refuse(websocket, exc, POLICY_VIOLATION)
        return
    state = websocket.app.state
    limit = runtime.config.max_realtime_sessions
    if state.realtime_sessions >= limit:
        message = f"The server holds its most realtime sessions ({limit}); retry shortly."
        await _over_limit(websocket, "realtime_sessions", 503, message)
        return
    client = websocket.state.client
    per_client = state.realtime_sessions_per_client
    limit = runtime.config.max_realtime_sessions_per_key
    if per_client.get(client, 0) >= limit:
        message = f"This API key holds its most realtime sessions ({limit}); close one first."
        await _over_limit(websocket, "realtime_sessions_for_client", 429, message)
        return
    per_client[client] = per_client.get(client, 0) + 1
    state.realtime_sessions += 1
    metrics.REALTIME_SESSIONS.inc()
    metrics.REALTIME_SESSIONS_TOTAL.labels(kind).inc()
    session = RealtimeSession(websocket, runtime, state.chat, kind, model)
    close = "client"
    try:
        await session.open()
        idle_s = runtime.config.realtime_idle_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(websocket.receive(), idle_s)
            except TimeoutError:
                if session.tasks:
                    continue  # the client waits for its answer: not idle
                close = "idle"
                error = APIError(
                    400,
                    f"The session was idle for {idle_s:g} s and is closed.",
                    code="session_idle_timeout",
                )
                await _refuse(websocket, error, 1000)
                break
            if message["type"] == "websocket.disconnect":
                break
            await session.handle(message.get("text") or message.get("bytes") or b"")
    except WebSocketDisconnect:
        pass
    except Exception:
        close = "error"
        logger.exception("realtime session %s failed", session.id)
    finally:
        await session.close()
        state.realtime_sessions -= 1
        per_client[client] -= 1
        if not per_client[client]:
            del per_client[client]
        metrics.REALTIME_SESSIONS.dec()
        c = session.counts
        logger.info(
            "WS /v1/realtime %s %.3fs id=%s type=%s model=%s turns=%d audio=%.1fs "
            "responses=%d errors=%d",
            close,
            time.perf_counter() - start,
            session.id,
            session.settings.type,
            session.settings.model,
            c["turns"],
            c["audio_seconds"],
            c["responses"],
            c["errors"],
        )
