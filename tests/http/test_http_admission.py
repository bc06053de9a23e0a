"""Admission: past the pending limit 503, past the per-key limit 429, past the queued audio
seconds 503, all with Retry-After and before any work; places come back when requests end.
In-process, with the fake engine paused to hold requests in flight."""

import asyncio

from tests.support.audio_files import encode, make_clip
from tests.support.http_helpers import (
    CHAT,
    MODEL,
    TRANSCRIPTIONS,
    assert_error,
    chat_body,
    metric,
    metrics_page,
    serve,
    until,
)
from tests.support.in_process import InProcess

OTHER_KEY = "second-key-456"
REJECTED = 'af3_requests_rejected_total{reason="%s"}'
IN_FLIGHT = "af3_requests_in_flight"


async def hold(app: InProcess, *bodies: dict, headers: dict | None = None) -> list[asyncio.Task]:
    """Send `bodies` with the engine paused; returns once each has reached the engine."""
    app.engine.paused = True
    started = len(app.engine.started)
    tasks = [
        asyncio.create_task(app.client.post(CHAT, json=body, headers=headers or {}))
        for body in bodies
    ]
    await until(lambda: len(app.engine.started) == started + len(bodies))
    return tasks


async def finish(app: InProcess, tasks: list[asyncio.Task]) -> None:
    app.engine.paused = False
    for response in await asyncio.gather(*tasks):
        assert response.status_code == 200, response.text


async def test_overload_is_refused_with_retry_after(tiny_checkpoint, tmp_path, speech) -> None:
    """Two requests at a time: a stream and a whole answer hold both places until they end."""
    async with serve(tiny_checkpoint, tmp_path, "--max-pending-requests", "2") as app:
        before = await metrics_page(app.client)
        body = chat_body(speech, max_tokens=4)
        tasks = await hold(app, body | {"stream": True}, body)
        assert metric(await metrics_page(app.client), IN_FLIGHT) == metric(before, IN_FLIGHT) + 2
        refused = await app.client.post(CHAT, json=body)
        await finish(app, tasks)
        after = await metrics_page(app.client)
        again = await app.client.post(CHAT, json=body)  # the places came back
    error = assert_error(refused, 503, code="server_overloaded")
    assert error["type"] == "service_unavailable"
    assert refused.headers["retry-after"] == "1"
    assert len(app.engine.started) == 3  # the refused request never reached the engine
    assert again.status_code == 200, again.text
    too_many = REJECTED % "too_many_pending"
    assert metric(after, too_many) == metric(before, too_many) + 1
    assert metric(after, IN_FLIGHT) == metric(before, IN_FLIGHT)


async def test_one_key_past_its_limit_gets_429(tiny_checkpoint, tmp_path, speech) -> None:
    flags = ["--api-key", OTHER_KEY, "--max-pending-requests-per-key", "1"]
    async with serve(tiny_checkpoint, tmp_path, *flags) as app:
        before = await metrics_page(app.client)
        body = chat_body(speech, max_tokens=4)
        tasks = await hold(app, body)
        refused = await app.client.post(CHAT, json=body)
        other = await hold(app, body, headers={"Authorization": f"Bearer {OTHER_KEY}"})
        await finish(app, tasks + other)
        after = await metrics_page(app.client)
        again = await app.client.post(CHAT, json=body)
    error = assert_error(refused, 429, code="rate_limit_exceeded")
    assert error["type"] == "rate_limit_error"
    assert refused.headers["retry-after"] == "1"
    assert again.status_code == 200, again.text
    per_key = REJECTED % "too_many_pending_for_client"
    assert metric(after, per_key) == metric(before, per_key) + 1


async def test_queued_audio_seconds_past_the_limit_get_503(
    tiny_checkpoint, tmp_path, speech
) -> None:
    """10 s of audio may be queued: 8 s in flight leave room for 1 s more, not for 8 s, on
    either endpoint; the seconds come back when the request ends."""
    async with serve(tiny_checkpoint, tmp_path, "--max-queued-audio-seconds", "10") as app:
        before = await metrics_page(app.client)
        eight = chat_body(speech, 8.0, max_tokens=4)
        tasks = await hold(app, eight)
        refused = await app.client.post(CHAT, json=eight)
        wav = encode(make_clip(speech, 8.0))
        refused_speech = await app.client.post(
            TRANSCRIPTIONS, data={"model": MODEL}, files={"file": ("a.wav", wav)}
        )
        one = await hold(app, chat_body(speech, 1.0, max_tokens=4))
        await finish(app, tasks + one)
        after = await metrics_page(app.client)
        again = await app.client.post(CHAT, json=eight)
    for response in (refused, refused_speech):
        assert_error(response, 503, code="server_overloaded")
        assert response.headers["retry-after"] == "5"
    assert again.status_code == 200, again.text
    backlog = REJECTED % "audio_backlog"
    assert metric(after, backlog) == metric(before, backlog) + 2
