"""Server-sent events of chat completions: the framing, the chunks, the usage chunk and
[DONE]; and an engine that dies mid-stream ends every open answer with an engine_dead error
(an error event in streams), turns /health to 503 and asks for the process exit. In-process."""

import asyncio
import json

import pytest

from tests.support.audio_files import encode, make_clip
from tests.support.http_helpers import (
    CHAT,
    MODEL,
    TRANSCRIPTIONS,
    answer_text,
    assert_error,
    chat_body,
    metric,
    metrics_page,
    serve,
    server_fixture,
    sse_data,
    until,
)

api = server_fixture()


def chunks(response) -> list[dict]:
    """The JSON chunks of a chat stream, checking it ends with [DONE] (and only there)."""
    data = sse_data(response)
    assert data[-1] == "[DONE]" and "[DONE]" not in data[:-1]
    return [json.loads(d) for d in data[:-1]]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_stream_framing_chunks_and_usage(api, speech, include_usage: bool) -> None:
    body = chat_body(speech, 3.0, max_tokens=7)
    whole = await api.client.post(CHAT, json=body)
    stream = {"stream": True, "stream_options": {"include_usage": include_usage}}
    response = await api.client.post(CHAT, json=body | stream)
    assert response.status_code == 200 and whole.status_code == 200
    events = chunks(response)
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert len({e["id"] for e in events}) == 1 and events[0]["model"] == MODEL
    assert events[0]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}}]
    with_choices = [e for e in events if e["choices"]]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in with_choices)
    assert text == answer_text(api.engine, 7) == whole.json()["choices"][0]["message"]["content"]
    finishes = [e["choices"][0].get("finish_reason") for e in with_choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert all("usage" not in e for e in with_choices)
    if include_usage:
        assert events[-1]["choices"] == [] and events[-1] is not with_choices[-1]
        assert events[-1]["usage"] == whole.json()["usage"]
        assert events[-1]["usage"]["completion_tokens"] == 7
    else:
        assert events[-1] is with_choices[-1]


async def test_stream_of_two_choices_with_logprobs(api, speech) -> None:
    body = chat_body(speech, max_tokens=5, n=2, logprobs=True, top_logprobs=2, stream=True)
    events = chunks(await api.client.post(CHAT, json=body))
    assert [c["index"] for c in events[0]["choices"]] == [0, 1]
    for index in (0, 1):
        mine = [c for e in events[1:] for c in e["choices"] if c["index"] == index]
        assert "".join(c["delta"].get("content", "") for c in mine) == answer_text(api.engine, 5)
        tokens = [t for c in mine for t in c["logprobs"]["content"]]
        assert len(tokens) == 5
        assert all(len(t["top_logprobs"]) == 2 for t in tokens)


async def test_engine_death_ends_open_answers_and_turns_health_503(
    tiny_checkpoint, tmp_path, speech
) -> None:
    """A chat stream, a whole chat answer and a transcription stream are generating when the
    engine dies: each ends with engine_dead (streams as an error event, chat's then [DONE]);
    /health answers 503, new requests are refused, and the app asks for the exit."""
    exits: list[float] = []
    grace = ["--engine-death-grace-s", "0.2"]
    loop = asyncio.get_running_loop()
    async with serve(
        tiny_checkpoint, tmp_path, *grace, on_engine_dead=lambda: exits.append(loop.time())
    ) as app:
        assert (await app.client.get("/health")).json() == {"status": "ok"}
        before = await metrics_page(app.client)
        app.engine.paused = True
        body = chat_body(speech, max_tokens=50)
        wav = encode(make_clip(speech, 40.0))
        tasks = [
            asyncio.create_task(app.client.post(CHAT, json=body | {"stream": True})),
            asyncio.create_task(app.client.post(CHAT, json=body)),
            asyncio.create_task(
                app.client.post(
                    TRANSCRIPTIONS,
                    data={"model": MODEL, "stream": "true"},
                    files={"file": ("a.wav", wav)},
                )
            ),
        ]
        await until(lambda: len(app.engine.started) == 4)  # the file is two windows
        killed_at = loop.time()
        app.engine.kill()
        chat_stream, chat_whole, speech_stream = await asyncio.gather(*tasks)
        health = await app.client.get("/health")
        refused = await app.client.post(CHAT, json=body)  # the engine refuses it
        await until(lambda: bool(exits), timeout_s=10)
        refused_later = await app.client.post(CHAT, json=body)  # refused before any work
        after = await metrics_page(app.client)
    # The stream had begun: its status stays 200, its end says what happened.
    events = chunks(chat_stream)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert set(events[-1]) == {"error"}
    assert events[-1]["error"]["code"] == "engine_dead"
    assert events[-1]["error"]["type"] == "service_unavailable"
    assert_error(chat_whole, 503, code="engine_dead")
    speech_events = [json.loads(d) for d in sse_data(speech_stream)]  # no [DONE] here
    assert speech_events[-1]["error"]["code"] == "engine_dead"
    assert health.status_code == 503 and health.json() == {"status": "engine_dead"}
    assert_error(refused, 503, code="engine_dead")
    assert_error(refused_later, 503, code="engine_dead")
    assert len(app.engine.started) == 4
    assert exits[0] - killed_at >= 0.2  # after the grace period
    dead = 'af3_requests_rejected_total{reason="engine_dead"}'
    assert metric(after, dead) == metric(before, dead) + 1
    assert metric(after, "af3_requests_in_flight") == metric(before, "af3_requests_in_flight")
