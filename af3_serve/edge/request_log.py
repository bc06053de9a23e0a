"""Request ids and one access-log line per request, without keys or audio in it."""

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from af3_serve import metrics

logger = logging.getLogger("af3_serve.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestLog:
    """Keeps a caller's `X-Request-Id` when it is safe to log, else makes one; returns it
    in the response header and logs method, path, status, duration and the id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope["path"] if scope["path"] in metrics.KNOWN_PATHS else "other"
            metrics.REQUESTS.labels(path, str(status)).inc()
            logger.info(
                "%s %s %s %.3fs id=%s",
                scope["method"],
                scope["path"],
                status,
                time.perf_counter() - start,
                request_id,
            )
