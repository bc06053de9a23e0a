"""A WebSocket client for the app in this process (httpx's ASGI transport has none): the
ASGI websocket messages exchanged over queues in the test's own event loop, so the fake
engine and the app's tasks run as they do under uvicorn."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI

from tests.support.server import API_KEY


class AsgiWebSocket:
    def __init__(self, app: FastAPI, path: str, headers: dict[str, str], protocols: list[str]):
        url = urlsplit(path)
        self.scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "scheme": "ws",
            "path": url.path,
            "raw_path": url.path.encode(),
            "query_string": url.query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 40000),
            "server": ("af3-serve", 80),
            "subprotocols": protocols,
            "state": {},
        }
        self.app = app
        self.to_app: asyncio.Queue[dict] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict] = asyncio.Queue()
        self.subprotocol: str | None = None
        self.close_code: int | None = None
        self.task: asyncio.Task | None = None

    async def connect(self) -> None:
        await self.to_app.put({"type": "websocket.connect"})
        self.task = asyncio.create_task(self.app(self.scope, self.to_app.get, self.from_app.put))
        message = await self.from_app.get()
        assert message["type"] == "websocket.accept", message
        self.subprotocol = message.get("subprotocol")

    async def send(self, event: dict[str, Any] | str) -> None:
        text = event if isinstance(event, str) else json.dumps(event)
        await self.to_app.put({"type": "websocket.receive", "text": text})

    async def recv(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """The next server event; a closed socket is {"type": "closed", "code": ...}."""
        message = await asyncio.wait_for(self.from_app.get(), timeout_s)
        if message["type"] == "websocket.close":
            self.close_code = message.get("code", 1000)
            return {"type": "closed", "code": self.close_code}
        return json.loads(message["text"])

    async def recv_until(self, kind: str) -> list[dict[str, Any]]:
        """Events up to and including the first of type `kind`."""
        events = []
        while True:
            events.append(await self.recv())
            if events[-1]["type"] in (kind, "closed"):
                return events

    async def disconnect(self) -> None:
        """The client drops: the app sees a disconnect and its handler ends."""
        await self.to_app.put({"type": "websocket.disconnect", "code": 1006})
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)


@asynccontextmanager
async def realtime_socket(
    app: FastAPI,
    query: str = "",
    headers: dict[str, str] | None = None,
    protocols: list[str] | None = None,
) -> AsyncIterator[AsgiWebSocket]:
    """A connected socket on /v1/realtime (`query`: e.g. "intent=transcription"), with the
    test key unless `headers` say otherwise; dropped at the end."""
    if headers is None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
    ws = AsgiWebSocket(app, "/v1/realtime?" + query, headers, protocols or [])
    await ws.connect()
    try:
        yield ws
    finally:
        if ws.task is not None and not ws.task.done():
            await ws.disconnect()
