"""/v1/realtime through the official `openai` client (`client.realtime.connect`) against a
real af3-serve: a transcription session's committed turns equal the REST transcription of
the same audio (greedy), a turn past 30 s included; a conversation session answers about
what it heard; hostile events leave it usable. The event shapes and orders are checked
in-process in tests/http/test_realtime.py."""

import asyncio
import base64
import json

import httpx
import numpy as np
import openai
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from af3_bench.stats import prefix_hit
from af3_model_executor.audio_spec import AudioSpec
from tests.support.audio_files import at_24k, audio_part, encode, pcm16, turns_with_pauses
from tests.support.server import API_KEY, wait_for

MODEL = "audio-flamingo-3"
COMPLETED = "conversation.item.input_audio_transcription.completed"


@pytest.fixture
def rt_client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=600
    )


async def send_turn(conn, audio, chunk_s: float = 1.0) -> None:  # noqa: ANN001
    data, step = pcm16(audio), int(chunk_s * 24000) * 2
    for i in range(0, len(data), step):
        await conn.input_audio_buffer.append(audio=base64.b64encode(data[i : i + step]).decode())
    await conn.input_audio_buffer.commit()


async def until(conn, kind: str) -> list:  # noqa: ANN001
    events = []
    async for event in conn:
        events.append(event)
        assert event.type != "error", event
        if event.type == kind:
            return events
    raise AssertionError(f"the socket closed before {kind}")


@pytest.mark.asyncio
async def test_transcription_session_equals_rest(rt_client, speech) -> None:
    turns = [at_24k(speech, 6.0), at_24k(speech, 40.0)]
    transcripts = []
    async with rt_client.realtime.connect(
        model=MODEL, extra_query={"intent": "transcription"}
    ) as conn:
        created = await conn.recv()
        assert created.type == "session.created" and created.session.type == "transcription"
        await conn.session.update(
            session={"type": "transcription", "audio": {"input": {"turn_detection": None}}}
        )
        assert (await conn.recv()).type == "session.updated"
        # Hostile events first: each an error event, the session still usable after.
        await conn.send({"type": "input_audio_buffer.append", "audio": "%%%"})  # type: ignore[arg-type]
        assert (await conn.recv()).type == "error"
        await conn.send({"type": "no.such.event"})  # type: ignore[arg-type]
        assert (await conn.recv()).type == "error"
        for audio in turns:
            await send_turn(conn, audio)
            events = await until(conn, COMPLETED)
            committed = events[0]
            assert committed.type == "input_audio_buffer.committed"
            done = events[-1]
            assert done.item_id == committed.item_id
            deltas = [e.delta for e in events if e.type.endswith("transcription.delta")]
            assert "".join(deltas) == done.transcript
            assert done.usage.type == "tokens" and done.usage.input_tokens > 0
            transcripts.append(done.transcript)
    for audio, transcript in zip(turns, transcripts, strict=True):
        rest = await rt_client.audio.transcriptions.create(
            model=MODEL, file=("turn.wav", encode(audio, rate=24000))
        )
        assert transcript == rest.text


@pytest.mark.asyncio
async def test_conversation_session(rt_client, speech) -> None:
    async with rt_client.realtime.connect(model=MODEL) as conn:
        created = await conn.recv()
        assert created.type == "session.created" and created.session.type == "realtime"
        await conn.session.update(
            session={"type": "realtime", "output_modalities": ["text"], "max_output_tokens": 16}
        )
        assert (await conn.recv()).type == "session.updated"
        await send_turn(conn, at_24k(speech, 5.0))
        await until(conn, "conversation.item.done")
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What is said?"}],
            }
        )
        await until(conn, "conversation.item.done")
        await conn.response.create()
        events = await until(conn, "response.done")
        done = events[-1].response
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert done.status in ("completed", "incomplete")
        assert done.output[0].content[0].text == text
        assert done.usage.input_token_details.audio_tokens > 0
        assert 0 < done.usage.output_tokens <= 16
        await conn.response.create(response={"output_modalities": ["audio"]})
        error = await conn.recv()
        assert error.type == "error" and error.error.code == "unsupported_modality"


def metric(server, name: str) -> float:  # noqa: ANN001
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def finished(server) -> float:  # noqa: ANN001
    """Engine requests run to their end (stop or length); aborted ones are not counted."""
    done = 'vllm:request_success_total{engine="0",finished_reason="'
    return metric(server, done + 'stop"') + metric(server, done + 'length"')


@pytest.mark.asyncio
async def test_browser_key_refusals_and_a_dropped_socket(server, speech) -> None:
    """The key as the browser's subprotocol; no key: an error event, then 1008; a socket
    dropped while AF3 answers aborts the engine request."""
    url = server.url.replace("http", "ws", 1) + "/v1/realtime?model=" + MODEL
    async with connect(url) as ws:
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1008
    protocols = ["realtime", f"openai-insecure-api-key.{API_KEY}"]
    finished_before = finished(server)
    async with connect(url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "session.created"
        data = base64.b64encode(pcm16(at_24k(speech, 20.0))).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": data}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await ws.send(json.dumps({"type": "response.create"}))
        while json.loads(await ws.recv())["type"] != "response.output_text.delta":
            pass
    assert wait_for(lambda: metric(server, "vllm:num_requests_running") == 0)
    assert wait_for(lambda: metric(server, "af3_requests_in_flight") == 0)
    assert finished(server) == finished_before  # aborted, not run to its end
    assert metric(server, "af3_realtime_sessions_open") == 0


async def stream(conn, audio: np.ndarray, chunk_s: float = 0.1) -> None:  # noqa: ANN001
    data, step = pcm16(audio), int(chunk_s * 24000) * 2
    for i in range(0, len(data), step):
        await conn.input_audio_buffer.append(audio=base64.b64encode(data[i : i + step]).decode())


@pytest.mark.asyncio
async def test_server_vad_turns_equal_rest(rt_client, speech) -> None:
    """The server hears two turns in a stream and commits each; each transcript equals the
    REST transcription of the span its events name (prefix padding to the silence's end)."""
    audio = turns_with_pauses(speech, [5.0, 3.0])
    vad = {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300}
    async with rt_client.realtime.connect(
        model=MODEL, extra_query={"intent": "transcription"}
    ) as conn:
        await conn.recv()
        await conn.session.update(
            session={"type": "transcription", "audio": {"input": {"turn_detection": vad}}}
        )
        assert (await conn.recv()).type == "session.updated"
        await stream(conn, audio)
        events = await until(conn, COMPLETED)
        events += await until(conn, COMPLETED)
    spans = {e.item_id: [e.audio_start_ms] for e in events if e.type.endswith("speech_started")}
    for e in events:
        if e.type.endswith("speech_stopped"):
            spans[e.item_id].append(e.audio_end_ms)
    done = [e for e in events if e.type == COMPLETED]
    assert len(spans) == len(done) == 2
    for turn in done:
        start, end = spans[turn.item_id]
        rest = await rt_client.audio.transcriptions.create(
            model=MODEL, file=("turn.wav", encode(audio[start * 24 : end * 24], rate=24000))
        )
        assert turn.transcript == rest.text


@pytest.mark.asyncio
async def test_long_turn_text_arrives_while_spoken(rt_client, speech) -> None:
    """A 75-s turn: its first windows' text comes before the speaker stops, and the whole
    transcript still equals REST's of the turn (the pieces were planned as the whole)."""
    audio = at_24k(speech, 75.0)
    async with rt_client.realtime.connect(
        model=MODEL, extra_query={"intent": "transcription"}
    ) as conn:
        await conn.recv()
        await stream(conn, audio[: 50 * 24000], chunk_s=1.0)
        early = await until(conn, "conversation.item.input_audio_transcription.delta")
        await stream(conn, audio[50 * 24000 :], chunk_s=1.0)
        await conn.input_audio_buffer.commit()
        events = early + await until(conn, COMPLETED)
    done = events[-1]
    deltas = [e for e in events if e.type.endswith("transcription.delta")]
    assert {e.item_id for e in deltas} == {done.item_id}
    assert "".join(e.delta for e in deltas) == done.transcript
    rest = await rt_client.audio.transcriptions.create(
        model=MODEL, file=("turn.wav", encode(audio, rate=24000))
    )
    assert done.transcript == rest.text


@pytest.mark.asyncio
async def test_server_vad_answers_a_turn(rt_client, speech) -> None:
    vad = {"type": "server_vad", "create_response": True}
    async with rt_client.realtime.connect(model=MODEL) as conn:
        await conn.recv()
        await conn.session.update(
            session={
                "type": "realtime",
                "max_output_tokens": 8,
                "audio": {"input": {"turn_detection": vad}},
            }
        )
        assert (await conn.recv()).type == "session.updated"
        await stream(conn, turns_with_pauses(speech, [3.0]))
        events = await until(conn, "response.done")
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
    ]
    assert "response.created" in kinds and events[-1].response.status in ("completed", "incomplete")
    assert events[-1].response.usage.input_token_details.audio_tokens > 0


@pytest.mark.asyncio
async def test_long_turn_is_prefilled_while_spoken(rt_client, server, speech) -> None:
    """A 65-s conversation turn: its two finished windows are prefilled (one token each)
    while it is spoken, so the answer finds them in the prefix cache; its prompt is REST's
    for the same audio sent whole."""
    audio = at_24k(speech, 65.0)
    before = finished(server)
    async with rt_client.realtime.connect(model=MODEL) as conn:
        await conn.recv()
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 4})
        assert (await conn.recv()).type == "session.updated"
        split = 35 * 24000
        for sent, wanted in ((audio[:split], 1), (audio[split:], 2)):  # 35 s, then the rest
            await stream(conn, sent, chunk_s=1.0)
            for _ in range(600):  # each window's prefill runs to its end (polled: the
                if finished(server) == before + wanted:  # socket is kept)
                    break
                await asyncio.sleep(0.5)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        done = (await until(conn, "response.done"))[-1].response
    rest = await rt_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [audio_part(audio, rate=24000)]}],
        max_tokens=4,
    )
    assert done.usage.input_tokens == rest.usage.prompt_tokens
    details = done.usage.input_token_details
    assert details.audio_tokens == rest.usage.prompt_tokens_details.audio_tokens
    window_tokens = AudioSpec().window_token_counts(AudioSpec().window_samples)[0]
    assert prefix_hit(details.cached_tokens, 2 * window_tokens), details
