"""/v1/realtime in-process on the fake engine: OpenAI's Realtime events for transcription and
conversation sessions, in order and shaped as the `openai` client's types; the limits and
faults (keys, session limit, buffer bound, bad events, dropped sockets)."""

import asyncio
import base64
import json
import logging

import numpy as np
import pytest
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter

from tests.support.audio_files import (
    as_pcm16,
    at_24k,
    audio_part,
    encode,
    pcm16,
    speaking,
    transcription_windows,
    turns_with_pauses,
)
from tests.support.http_helpers import (
    CHAT,
    MODEL,
    THINK_MODEL,
    TRANSCRIPTIONS,
    metric,
    metrics_page,
    server_fixture,
)
from tests.support.in_process import InProcess
from tests.support.server import API_KEY
from tests.support.ws_asgi import AsgiWebSocket, realtime_socket

api = server_fixture()
SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
TRANSCRIPTION = "intent=transcription"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"


def append(audio: np.ndarray, chunk_s: float = 0.5, rate: int = 24000) -> list[dict]:
    data, step = pcm16(audio), int(chunk_s * rate) * 2
    return [
        {
            "type": "input_audio_buffer.append",
            "audio": base64.b64encode(data[i : i + step]).decode(),
        }
        for i in range(0, len(data), step)
    ]


def checked(events: list[dict]) -> list[dict]:
    """Each event validates as the openai client's own type (strictly, not constructed)."""
    for event in events:
        if event["type"] != "closed":
            SERVER_EVENT.validate_python(event)
    return events


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


async def send_turn(ws: AsgiWebSocket, audio: np.ndarray) -> None:
    for event in append(audio):
        await ws.send(event)
    await ws.send({"type": "input_audio_buffer.commit"})


@pytest.mark.asyncio
async def test_transcription_turn_equals_rest(api: InProcess, speech, caplog) -> None:
    caplog.set_level(logging.INFO, "af3_serve.access")
    audio = at_24k(speech, 4.0)
    async with realtime_socket(api.app, TRANSCRIPTION) as ws:
        created = checked([await ws.recv()])[0]
        assert created["type"] == "session.created"
        assert created["session"]["type"] == "transcription"
        await send_turn(ws, audio)
        events = checked(await ws.recv_until(COMPLETED))
    assert types(events)[:3] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    item_id = events[0]["item_id"]
    deltas = [e for e in events if e["type"].endswith("transcription.delta")]
    done = events[-1]
    assert deltas and all(e["item_id"] == item_id for e in deltas)
    assert "".join(e["delta"] for e in deltas) == done["transcript"]
    rest = await api.client.post(
        TRANSCRIPTIONS,
        data={"model": MODEL},
        files={"file": ("turn.wav", encode(audio, rate=24000))},
    )
    assert rest.status_code == 200, rest.text
    assert done["transcript"] == rest.json()["text"]
    assert done["usage"] == rest.json()["usage"]
    prompts = list(api.engine.prompts.values())
    assert prompts[0] == prompts[1]  # same instruction, same audio tokens
    # One access-log line for the session, with what it did.
    lines = [r.getMessage() for r in caplog.records if "/v1/realtime" in r.getMessage()]
    assert len(lines) == 1 and "type=transcription" in lines[0] and "turns=1" in lines[0]


@pytest.mark.asyncio
async def test_long_turn_is_transcribed_in_30s_pieces(api: InProcess, speech) -> None:
    """65 s at 16 kHz (the session says so): the window plan's pieces (at least three),
    the first ones transcribed before the commit, stitched as the REST answer."""
    api.engine.answer_for = lambda rid: f" Window {rid.rsplit('-', 1)[1]} says hello."
    audio = as_pcm16(speaking(speech, 65.0))
    windows = transcription_windows(audio)
    async with realtime_socket(api.app, TRANSCRIPTION) as ws:
        await ws.recv()
        fmt = {"type": "audio/pcm", "rate": 16000}
        update = {"type": "transcription", "audio": {"input": {"format": fmt}}}
        await ws.send({"type": "session.update", "session": update})
        # Not `checked`: a 16-kHz rate is ours (the openai type allows 24000 only; its client
        # parses the event all the same).
        updated = await ws.recv()
        assert updated["session"]["audio"]["input"]["format"] == fmt
        appends = append(audio, chunk_s=5.0, rate=16000)
        for event in appends[:9]:
            await ws.send(event)
        # 45 s spoken: the first window's text comes while the speaker still talks.
        early = await ws.recv_until("conversation.item.input_audio_transcription.delta")
        for event in appends[9:]:
            await ws.send(event)
        await ws.send({"type": "input_audio_buffer.commit"})
        events = early + await ws.recv_until(COMPLETED)
    done = checked(events)[-1]
    said = " ".join(f"Window {i} says hello." for i in range(len(windows)))
    assert len(windows) >= 3 and done["transcript"] == said
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    deltas = [e for e in events if e["type"].endswith("transcription.delta")]
    assert {e["item_id"] for e in deltas} == {committed["item_id"]}
    assert "".join(e["delta"] for e in deltas) == said
    assert len(api.engine.started) == len(windows)  # no window transcribed twice
    rest = await api.client.post(
        TRANSCRIPTIONS, data={"model": MODEL}, files={"file": ("turn.wav", encode(audio))}
    )
    assert done["transcript"] == rest.json()["text"]


@pytest.mark.asyncio
async def test_g711_input(api: InProcess, speech) -> None:
    """audio/pcmu at 8 kHz: decoded and transcribed like the same samples as 16-bit PCM."""
    audioop = pytest.importorskip("audioop")
    clip = speaking(speech, 2.0)[::2]  # 8 kHz
    ulaw = audioop.lin2ulaw(pcm16(clip), 2)
    async with realtime_socket(api.app, TRANSCRIPTION) as ws:
        await ws.recv()
        session = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
        await ws.send({"type": "session.update", "session": session})
        assert (await ws.recv())["type"] == "session.updated"
        await ws.send(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(ulaw).decode()}
        )
        await ws.send({"type": "input_audio_buffer.commit"})
        events = checked(await ws.recv_until(COMPLETED))
    assert events[-1]["transcript"]
    decoded = np.frombuffer(audioop.ulaw2lin(ulaw, 2), "<i2").astype(np.float32) / 32768
    rest = await api.client.post(
        TRANSCRIPTIONS, data={"model": MODEL}, files={"file": ("t.wav", encode(decoded, rate=8000))}
    )
    prompts = list(api.engine.prompts.values())
    assert rest.status_code == 200 and prompts[0] == prompts[1]


@pytest.mark.asyncio
async def test_clear_empty_commit_and_turn_detection(api: InProcess, speech) -> None:
    async with realtime_socket(api.app, TRANSCRIPTION) as ws:
        await ws.recv()
        for event in append(at_24k(speech, 1.0)):
            await ws.send(event)
        await ws.send({"type": "input_audio_buffer.clear", "event_id": "c1"})
        assert (await ws.recv())["type"] == "input_audio_buffer.cleared"
        await ws.send({"type": "input_audio_buffer.commit", "event_id": "e1"})
        error = checked([await ws.recv()])[0]
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        assert error["error"]["event_id"] == "e1"
        refused = [
            ({"type": "semantic_vad"}, "use 'server_vad'"),
            ({"type": "server_vad", "idle_timeout_ms": 5000}, "idle_timeout_ms"),
        ]
        for vad, says in refused:
            session = {"type": "transcription", "audio": {"input": {"turn_detection": vad}}}
            await ws.send({"type": "session.update", "session": session})
            error = checked([await ws.recv()])[0]
            assert error["type"] == "error"
            assert error["error"]["code"] == "unsupported_turn_detection"
            assert says in error["error"]["message"]
        session["audio"]["input"]["turn_detection"] = None
        await ws.send({"type": "session.update", "session": session})
        updated = checked([await ws.recv()])[0]
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
    assert api.engine.started == []


@pytest.mark.asyncio
async def test_bad_events_leave_the_session_usable(api: InProcess, speech) -> None:
    bad = [
        ("{not json", "invalid_json"),
        (json.dumps({"type": "no.such.event"}), "invalid_value"),
        (
            json.dumps({"type": "input_audio_buffer.append", "audio": "@@not base64@@"}),
            "invalid_base64",
        ),
        (json.dumps({"type": "input_audio_buffer.append"}), "invalid_event"),
        (
            json.dumps({"type": "input_audio_buffer.append", "audio": "AA=="}),
            "invalid_audio",
        ),  # one byte
        (json.dumps([1, 2]), "invalid_event"),
        ("x" * (8 * 2**20 + 1), "event_too_large"),
        (json.dumps({"type": "response.create"}), "invalid_value"),  # not in transcription
    ]
    async with realtime_socket(api.app, TRANSCRIPTION) as ws:
        await ws.recv()
        for text, code in bad:
            await ws.send(text)
            error = checked([await ws.recv()])[0]
            assert error["type"] == "error" and error["error"]["code"] == code, (text[:80], error)
            assert "Traceback" not in error["error"]["message"]
        await send_turn(ws, at_24k(speech, 1.0))
        events = checked(await ws.recv_until(COMPLETED))
    assert events[-1]["transcript"]


@pytest.mark.asyncio
async def test_keys(api: InProcess) -> None:
    async with realtime_socket(api.app, TRANSCRIPTION, headers={}) as ws:
        error = await ws.recv()
        assert error["error"]["code"] == "invalid_api_key"
        assert (await ws.recv())["code"] == 1008
    wrong = {"Authorization": "Bearer nope"}
    async with realtime_socket(api.app, TRANSCRIPTION, headers=wrong) as ws:
        assert (await ws.recv())["error"]["code"] == "invalid_api_key"
    protocols = ["realtime", f"openai-insecure-api-key.{API_KEY}"]
    async with realtime_socket(api.app, TRANSCRIPTION, headers={}, protocols=protocols) as ws:
        assert ws.subprotocol == "realtime"
        assert (await ws.recv())["type"] == "session.created"
    async with realtime_socket(api.app, "model=nope") as ws:
        assert (await ws.recv())["error"]["code"] == "model_not_found"


one_session = server_fixture("--max-realtime-sessions", "1", "--max-realtime-buffer-seconds", "2")
idle = server_fixture("--realtime-idle-timeout-s", "0.3")


@pytest.mark.asyncio
async def test_idle_session_is_closed(idle: InProcess) -> None:
    async with realtime_socket(idle.app, TRANSCRIPTION) as ws:
        assert (await ws.recv())["type"] == "session.created"
        error = await ws.recv()
        assert error["error"]["code"] == "session_idle_timeout"
        assert (await ws.recv())["type"] == "closed"
    assert idle.app.state.realtime_sessions == 0


one_per_key = server_fixture("--max-realtime-sessions-per-key", "1", "--api-key", "other-key")


@pytest.mark.asyncio
async def test_sessions_per_key(one_per_key: InProcess) -> None:
    async with realtime_socket(one_per_key.app, TRANSCRIPTION) as ws:
        assert (await ws.recv())["type"] == "session.created"
        async with realtime_socket(one_per_key.app, TRANSCRIPTION) as second:
            error = await second.recv()
            assert error["error"]["code"] == "session_limit_reached"
            assert "API key" in error["error"]["message"]
        other = {"Authorization": "Bearer other-key"}
        async with realtime_socket(one_per_key.app, TRANSCRIPTION, headers=other) as third:
            assert (await third.recv())["type"] == "session.created"
    # Closed sessions free their key's place.
    async with realtime_socket(one_per_key.app, TRANSCRIPTION) as ws:
        assert (await ws.recv())["type"] == "session.created"
    assert one_per_key.app.state.realtime_sessions_per_client == {}


@pytest.mark.asyncio
async def test_session_limit_and_buffer_bound(one_session: InProcess, speech) -> None:
    async with realtime_socket(one_session.app, TRANSCRIPTION) as ws:
        await ws.recv()
        async with realtime_socket(one_session.app, TRANSCRIPTION) as second:
            error = await second.recv()
            assert error["error"]["code"] == "session_limit_reached"
            assert (await second.recv())["code"] == 1013
        for event in append(at_24k(speech, 1.5), chunk_s=1.5):
            await ws.send(event)
        for event in append(at_24k(speech, 1.0), chunk_s=1.0):
            await ws.send(event)  # past 2 s: refused whole
        error = checked([await ws.recv()])[0]
        assert error["error"]["code"] == "input_audio_buffer_full"
        await ws.send({"type": "input_audio_buffer.commit"})
        events = await ws.recv_until(COMPLETED)
        page = await metrics_page(one_session.client)
    assert events[-1]["type"].endswith("completed")
    assert metric(page, "af3_realtime_sessions_open") == 1
    assert metric(page, 'af3_requests_rejected_total{reason="realtime_sessions"}') >= 1
    assert metric(page, 'af3_realtime_turns_total{kind="transcription",outcome="completed"}') >= 1
    # The session's one turn: 1.5 s taken, the refused 1 s not.
    assert metric(page, "af3_realtime_audio_seconds_total") >= 1.5


@pytest.mark.asyncio
async def test_dropped_socket_aborts_the_turn(api: InProcess, speech) -> None:
    from tests.support.http_helpers import until

    series = 'af3_client_disconnects_total{endpoint="realtime"}'
    before = metric(await metrics_page(api.client), series)
    api.engine.paused = True
    async with realtime_socket(api.app, TRANSCRIPTION) as ws:
        await ws.recv()
        await send_turn(ws, at_24k(speech, 1.0))
        await until(lambda: len(api.engine.started) == 1)
        await ws.disconnect()
    assert api.engine.aborted == api.engine.started
    # A response in flight, the same.
    async with realtime_socket(api.app, f"model={MODEL}") as ws:
        await ws.recv()
        await send_turn(ws, at_24k(speech, 1.0))
        await ws.recv_until("conversation.item.done")
        await ws.send({"type": "response.create"})
        await until(lambda: len(api.engine.started) == 2)
        await ws.disconnect()
    assert api.engine.aborted == api.engine.started
    assert api.app.state.runtime.admission.pending == 0
    assert api.app.state.realtime_sessions == 0
    assert metric(await metrics_page(api.client), series) == before + 2


async def conversation(ws: AsgiWebSocket, model: str = MODEL) -> None:
    created = checked([await ws.recv()])[0]
    assert created["session"]["type"] == "realtime" and created["session"]["model"] == model


@pytest.mark.asyncio
async def test_conversation_turns_and_responses(api: InProcess, speech) -> None:
    async with realtime_socket(api.app, f"model={MODEL}") as ws:
        await conversation(ws)
        await ws.send({"type": "session.update", "session": {"max_output_tokens": 12}})
        assert (await ws.recv())["session"]["max_output_tokens"] == 12
        await send_turn(ws, at_24k(speech, 2.0))
        committed = checked(await ws.recv_until("conversation.item.done"))
        assert types(committed) == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "What is said?"}],
        }
        await ws.send({"type": "conversation.item.create", "item": item})
        checked(await ws.recv_until("conversation.item.done"))
        await ws.send({"type": "response.create"})
        events = checked(await ws.recv_until("response.done"))
        assert types(events)[:3] == [
            "response.created",
            "response.output_item.added",
            "response.content_part.added",
        ]
        assert types(events)[-4:] == [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.done",
        ]
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        done = events[-1]["response"]
        assert done["status"] in ("completed", "incomplete")
        assert done["output"][0]["content"][0]["text"] == text
        first_prompt = api.engine.prompts[api.engine.started[-1]]
        audio_id = api.app.state.runtime.audio_token_id
        assert (
            done["usage"]["input_token_details"]["audio_tokens"] == first_prompt.count(audio_id) > 0
        )
        assert done["usage"]["input_tokens"] == len(first_prompt)
        # A second response hears everything so far, its own first answer included.
        await ws.send({"type": "response.create"})
        await ws.recv_until("response.done")
        second_prompt = api.engine.prompts[api.engine.started[-1]]
        assert second_prompt[: len(first_prompt)] == first_prompt
        assert api.engine.tokenizer.decode(second_prompt).count(text.strip()) == 1


@pytest.mark.asyncio
async def test_long_turn_is_prefilled_while_spoken(api: InProcess, speech) -> None:
    """A 65-s turn of a conversation: its two finished 30-s windows go to the engine (one
    token, behind the conversation so far) before the turn ends, as audios of their own;
    the answer's audios begin with them (the prefix cache holds their blocks), and its
    prompt is the REST prompt of the same audio sent whole, token for token."""
    audio = at_24k(speech, 65.0)
    greeting = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "Listen."}],
    }
    async with realtime_socket(api.app, f"model={MODEL}") as ws:
        await conversation(ws)
        await ws.send({"type": "conversation.item.create", "item": greeting})
        await ws.recv_until("conversation.item.done")

        def prefills() -> list[list[str]]:  # the audios of each one-token request
            started = api.engine.started
            return [api.engine.audios[r] for r in started if api.engine.params[r].max_tokens == 1]

        appends = append(audio, chunk_s=5.0)
        for sent, wanted in ((appends[:7], 1), (appends[7:], 2)):  # 35 s, then the rest
            for event in sent:
                await ws.send(event)
            for _ in range(500):  # a window finishes a second before the audio's end
                if len(prefills()) == wanted and len(api.engine.finished) == wanted:
                    break
                await asyncio.sleep(0.01)
        first, last = prefills()
        assert len(first) == 1 and len(last) == 2 and last[0] == first[0]
        await ws.send({"type": "input_audio_buffer.commit"})
        await ws.send({"type": "response.create"})
        done = checked(await ws.recv_until("response.done"))[-1]
    assert done["response"]["status"] in ("completed", "incomplete")
    answer = api.engine.started[-1]
    assert api.engine.audios[answer][:2] == last and len(api.engine.audios[answer]) == 3
    assert len(prefills()) == 2  # no window prefilled twice
    messages = [{"role": "user", "content": [{"type": "text", "text": "Listen."}]}]
    messages[0]["content"].append(audio_part(audio, rate=24000))
    rest = await api.client.post(CHAT, json={"model": MODEL, "messages": messages})
    assert rest.status_code == 200, rest.text
    assert api.engine.prompts[api.engine.started[-1]] == api.engine.prompts[answer]
    assert len(api.engine.audios[api.engine.started[-1]]) == 1


two_audios = server_fixture("--max-audios-per-request", "2")


@pytest.mark.asyncio
async def test_a_cut_turn_counts_as_one_audio(two_audios: InProcess, speech) -> None:
    """--max-audios-per-request counts a conversation's audio turns, not the clips a long
    turn is sent as: two turns (a 35-s one, two clips) are answered; a third is refused, as
    is an item of more audio parts than there is room for, and an item id already taken."""
    async with realtime_socket(two_audios.app, f"model={MODEL}") as ws:
        await conversation(ws)
        second = base64.b64encode(pcm16(at_24k(speech, 1.0))).decode()
        part = {"type": "input_audio", "audio": second}
        three = {"type": "message", "role": "user", "content": [part] * 3}
        await ws.send({"type": "conversation.item.create", "item": three})
        assert (await ws.recv())["error"]["code"] == "too_many_audios"
        await send_turn(ws, at_24k(speech, 35.0))
        await send_turn(ws, at_24k(speech, 2.0))
        await ws.send({"type": "response.create"})
        done = checked(await ws.recv_until("response.done"))[-1]
        assert done["response"]["status"] in ("completed", "incomplete")
        assert len(two_audios.engine.audios[two_audios.engine.started[-1]]) == 3
        await send_turn(ws, at_24k(speech, 2.0))
        error = await ws.recv_until("error")
        assert error[-1]["error"]["code"] == "too_many_audios"
        hi = [{"type": "input_text", "text": "Hi"}]
        said = {"type": "message", "role": "user", "content": hi}
        await ws.send({"type": "conversation.item.create", "item": {**said, "id": "mine"}})
        await ws.recv_until("conversation.item.done")
        await ws.send({"type": "conversation.item.create", "item": {**said, "id": "mine"}})
        assert (await ws.recv())["error"]["code"] == "item_id_taken"


two_engines = server_fixture("--data-parallel-size", "2")


@pytest.mark.asyncio
async def test_a_conversation_stays_on_one_data_parallel_engine(
    two_engines: InProcess, speech
) -> None:
    """A conversation's requests (a long turn's prefill, the answers) are named by the
    session's id, so they reach the data-parallel engine that holds its prefix."""
    seen: list[tuple[str | None, int | None]] = []
    generate = two_engines.engine.generate

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append((kwargs.get("session_id"), kwargs.get("data_parallel_rank")))
        return generate(*args, **kwargs)

    two_engines.engine.generate = spy
    async with realtime_socket(two_engines.app, f"model={MODEL}") as ws:
        session = (await ws.recv())["session"]["id"]
        for event in append(at_24k(speech, 35.0), chunk_s=5.0):
            await ws.send(event)
        for _ in range(500):  # the first window's prefill
            if seen:
                break
            await asyncio.sleep(0.01)
        await ws.send({"type": "input_audio_buffer.commit"})
        for _ in range(2):
            await ws.send({"type": "response.create", "response": {"max_output_tokens": 4}})
            done = checked(await ws.recv_until("response.done"))[-1]
            assert done["response"]["status"] == "incomplete"
    assert len(seen) == 3 and {s for s, _ in seen} == {session}
    assert len({rank for _, rank in seen}) == 1 and seen[0][1] is not None


@pytest.mark.asyncio
async def test_cancel_think_and_audio_output(api: InProcess, speech) -> None:
    from tests.support.http_helpers import until

    async with realtime_socket(api.app, f"model={THINK_MODEL}") as ws:
        await conversation(ws, THINK_MODEL)
        await ws.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "output_modalities": ["audio"]},
            }
        )
        error = checked([await ws.recv()])[0]
        assert error["error"]["code"] == "unsupported_modality"
        await send_turn(ws, at_24k(speech, 1.0))
        await ws.recv_until("conversation.item.done")
        api.engine.paused = True
        await ws.send({"type": "response.create"})
        assert (await ws.recv())["type"] == "response.created"
        await until(lambda: len(api.engine.started) == 1)
        await ws.send({"type": "response.create"})
        busy = await ws.recv_until("error")
        assert busy[-1]["error"]["code"] == "conversation_already_has_active_response"
        await ws.send({"type": "response.cancel"})
        done = checked(await ws.recv_until("response.done"))[-1]
        assert done["response"]["status"] == "cancelled"
        assert api.engine.aborted == api.engine.started
        assert api.engine.lora[api.engine.started[0]] is not None  # the thinking adapter
        api.engine.paused = False
    assert api.app.state.runtime.admission.pending == 0


@pytest.mark.asyncio
async def test_session_update_to_transcription_and_a_failed_turn(api: InProcess, speech) -> None:
    """A conversation session turned into a transcription session by `session.update`; a
    turn the engine cannot finish gets `...transcription.failed` with OpenAI's error."""
    from tests.support.http_helpers import until

    async with realtime_socket(api.app) as ws:
        await conversation(ws)
        await ws.send({"type": "session.update", "session": {"type": "transcription"}})
        updated = checked([await ws.recv()])[0]
        assert updated["session"]["type"] == "transcription"
        assert updated["session"]["audio"]["input"]["transcription"]["model"] == MODEL
        await send_turn(ws, at_24k(speech, 1.0))
        assert (await ws.recv_until(COMPLETED))[-1]["transcript"]
        api.engine.paused = True
        await send_turn(ws, at_24k(speech, 1.0))
        await until(lambda: len(api.engine.started) == 2)
        api.engine.kill()
        events = checked(await ws.recv_until(FAILED))
    failed = events[-1]
    assert failed["item_id"] == events[0]["item_id"]
    assert failed["error"]["code"] == "engine_dead"
    assert api.app.state.runtime.admission.pending == 0


def sent_between(audio: np.ndarray, start_ms: int, end_ms: int) -> np.ndarray:
    return audio[start_ms * 24 : end_ms * 24]


@pytest.mark.asyncio
async def test_server_vad_commits_each_turn_as_rest_hears_it(api: InProcess, speech) -> None:
    """Silero hears two turns in a stream (100-ms appends): each is started, stopped and
    committed by the server, with OpenAI's timeline positions, and its committed audio (the
    prefix padding to the end of the silence that ended it) is what REST transcribes of that
    span of the stream."""
    audio = turns_with_pauses(speech, [6.0, 3.0])
    vad = {"type": "server_vad", "prefix_padding_ms": 300, "silence_duration_ms": 500}
    async with realtime_socket(api.app, TRANSCRIPTION) as ws:
        await ws.recv()
        session = {"type": "transcription", "audio": {"input": {"turn_detection": vad}}}
        await ws.send({"type": "session.update", "session": session})
        updated = checked([await ws.recv()])[0]
        shown = updated["session"]["audio"]["input"]["turn_detection"]
        assert shown["type"] == "server_vad" and shown["silence_duration_ms"] == 500
        for event in append(audio, chunk_s=0.1):
            await ws.send(event)
        events: list[dict] = []
        while types(events).count(COMPLETED) < 2:
            events += checked(await ws.recv_until(COMPLETED))
    # The next turn may start before the last one's transcript is done: by item.
    turns = []
    for started in [e for e in events if e["type"] == "input_audio_buffer.speech_started"]:
        item_id = started["item_id"]
        mine = [e for e in events if e.get("item_id", e.get("item", {}).get("id")) == item_id]
        kinds = [k for k in types(mine) if not k.endswith("transcription.delta")]
        assert kinds == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
            COMPLETED,
        ]
        turns.append((mine[0]["audio_start_ms"], mine[1]["audio_end_ms"], item_id, mine[2]))
    assert len(turns) == 2 and turns[1][3]["previous_item_id"] == turns[0][2]
    # Speech starts at 1 s and 8.5 s (heard within half a second) and lasts 6 s and 3 s.
    (start_a, end_a, *_), (start_b, end_b, *_) = turns
    assert 500 <= start_a <= 1000 and 7000 <= end_a <= 8000
    assert 8000 <= start_b <= 9000 and 12000 <= end_b <= 13000
    completed = [e["item_id"] for e in events if e["type"] == COMPLETED]
    assert completed == [item_id for *_, item_id, _ in turns]  # in commit order
    # The turns' engine work overlaps: matched to REST's by their audio's content hash.
    heard = sorted(h for r in api.engine.started for h in api.engine.audios[r])
    by_rest = []
    for start, end, *_ in turns:
        rest = await api.client.post(
            TRANSCRIPTIONS,
            data={"model": MODEL},
            files={"file": ("turn.wav", encode(sent_between(audio, start, end), rate=24000))},
        )
        assert rest.status_code == 200, rest.text
        by_rest += api.engine.audios[api.engine.started[-1]]
    assert len(set(by_rest)) == 2 and sorted(by_rest) == heard


@pytest.mark.asyncio
async def test_server_vad_answers_each_turn_and_speech_interrupts(api: InProcess, speech) -> None:
    """A conversation session with server VAD: the end of a turn creates the response;
    speech heard while it runs cancels it (interrupt_response)."""
    vad = {"type": "server_vad", "create_response": True, "interrupt_response": True}
    async with realtime_socket(api.app, f"model={MODEL}") as ws:
        await conversation(ws)
        session = {"type": "realtime", "audio": {"input": {"turn_detection": vad}}}
        await ws.send({"type": "session.update", "session": session})
        assert checked([await ws.recv()])[0]["type"] == "session.updated"
        api.engine.paused = True  # the answer stays in progress
        for event in append(turns_with_pauses(speech, [3.0]), chunk_s=0.1):
            await ws.send(event)
        events = checked(await ws.recv_until("response.content_part.added"))
        assert types(events)[:5] == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        for event in append(at_24k(speech, 1.0), chunk_s=0.1):
            await ws.send(event)
        events = checked(await ws.recv_until("response.done"))
        api.engine.paused = False
    assert "input_audio_buffer.speech_started" in types(events)
    assert events[-1]["response"]["status"] == "cancelled"
    assert api.engine.aborted


@pytest.mark.asyncio
async def test_items_retrieved_deleted_and_not_truncated(api: InProcess, speech) -> None:
    """An audio item comes back with the audio committed; a deleted item leaves what later
    responses hear; unknown items and truncation get error events."""
    audio = at_24k(speech, 1.0)
    async with realtime_socket(api.app, f"model={MODEL}") as ws:
        await conversation(ws)
        await send_turn(ws, audio)
        events = checked(await ws.recv_until("conversation.item.done"))
        audio_id = events[0]["item_id"]
        text = {"type": "input_text", "text": "Say nothing about zebras."}
        item = {"type": "message", "role": "user", "content": [text]}
        await ws.send({"type": "conversation.item.create", "item": item})
        text_id = checked(await ws.recv_until("conversation.item.done"))[-1]["item"]["id"]
        await ws.send({"type": "conversation.item.retrieve", "item_id": audio_id})
        retrieved = checked([await ws.recv()])[0]
        assert retrieved["type"] == "conversation.item.retrieved"
        assert base64.b64decode(retrieved["item"]["content"][0]["audio"]) == pcm16(audio)
        await ws.send({"type": "conversation.item.delete", "item_id": text_id})
        deleted = checked([await ws.recv()])[0]
        assert deleted == {**deleted, "type": "conversation.item.deleted", "item_id": text_id}
        for kind in ("retrieve", "delete"):
            await ws.send({"type": f"conversation.item.{kind}", "item_id": text_id})
            error = checked([await ws.recv()])[0]
            assert error["error"]["code"] == "item_not_found"
        truncate = {"item_id": audio_id, "content_index": 0, "audio_end_ms": 100}
        await ws.send({"type": "conversation.item.truncate", **truncate})
        assert checked([await ws.recv()])[0]["error"]["code"] == "unsupported_modality"
        await ws.send({"type": "response.create", "response": {"max_output_tokens": 2}})
        checked(await ws.recv_until("response.done"))
    (prompt,) = list(api.engine.prompts.values())
    assert "zebras" not in api.engine.tokenizer.decode(prompt)
