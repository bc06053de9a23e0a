"""The request body's limits, enforced while it arrives: a size cap (declared length and
streamed bytes) and a deadline, so a slow client cannot hold a connection forever."""

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from af3_serve import metrics
from af3_serve.errors import APIError


class _Refused(Exception):
    def __init__(self, error: APIError, reason: str) -> None:
        self.error = error
        self.reason = reason


class BodyLimits:
    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    def _too_large(self) -> _Refused:
        error = APIError(
            413,
            f"The request body is larger than {self.max_bytes} bytes.",
            code="request_too_large",
        )
        return _Refused(error, "body_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            refused = self._too_large()
            metrics.REJECTED.labels(refused.reason).inc()
            await refused.error.response()(scope, receive, send)
            return

        received = 0
        body_done = False
        deadline = time.monotonic() + self.read_timeout_s

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later receives only wait for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                error = APIError(
                    408,
                    f"The request body did not arrive within {self.read_timeout_s:g} s.",
                    code="request_timeout",
                )
                raise _Refused(error, "body_read_timeout") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        try:
            await self.app(scope, guarded_receive, send)
        except _Refused as refused:
            metrics.REJECTED.labels(refused.reason).inc()
            await refused.error.response()(scope, receive, send)
