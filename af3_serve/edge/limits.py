"""The request body's limits, enforced while it arrives: a size cap (declared length and
streamed bytes) and a deadline, so a slow client cannot hold a connection forever."""

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from af3_serve import metrics
from af3_serve.edge.errors import APIError


class BodyLimits:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        read_timeout_s: float,
        path_max_bytes: dict[str, int] | None = None,
    ) -> None:
        """`path_max_bytes`: paths with a size cap of their own (uploads spooled to disk)."""
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self.path_max_bytes = path_max_bytes or {}

    def _too_large(self, max_bytes: int) -> APIError:
        return APIError(
            413,
            f"The request body is larger than {max_bytes} bytes.",
            code="request_too_large",
        )

    def _too_slow(self) -> APIError:
        return APIError(
            408,
            f"The request body did not arrive within {self.read_timeout_s:g} s.",
            code="request_timeout",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_max_bytes.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            metrics.REJECTED.labels("body_too_large").inc()
            await self._too_large(max_bytes).response()(scope, receive, send)
            return

        received = 0
        body_done = False
        refused: APIError | None = None
        deadline = time.monotonic() + self.read_timeout_s

        async def guarded_send(message: Message) -> None:
            if refused is None:  # once we have answered, the app's own answer is dropped
                await send(message)

        async def guarded_receive() -> Message:
            """Answers 413/408 itself the moment a limit is passed, then tells the app the
            client is gone, so the app stops reading whatever it was doing."""
            nonlocal received, body_done, refused
            if refused is not None:
                return {"type": "http.disconnect"}
            if body_done:  # later receives only wait for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                refused, reason = self._too_slow(), "body_read_timeout"
            else:
                if message["type"] == "http.disconnect":
                    metrics.CLIENT_DISCONNECTS.labels("upload").inc()  # left mid-body
                if message["type"] != "http.request":
                    return message
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received <= max_bytes:
                    return message
                refused, reason = self._too_large(max_bytes), "body_too_large"
            metrics.REJECTED.labels(reason).inc()
            await refused.response()(scope, receive, send)
            return {"type": "http.disconnect"}

        await self.app(scope, guarded_receive, guarded_send)
