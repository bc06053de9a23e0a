"""OpenAI's speech-to-text API over HTTP, in-process: the file cut into windows, one
engine request each with AF3's instruction, answers stitched in window order and rendered as
json, text, srt, vtt, verbose_json or a stream of events; errors name the field. The fake
engine answers each window with a text of its own, so the content is known exactly.

Here the voice-activity detector is pinned to find speech in every 30-s stretch, so the
windows are known; where the real detector puts them is tests/http/test_speech_windows.py."""

import asyncio
import io
import json
import re
from datetime import timedelta

import pytest
import soundfile as sf
import srt
import webvtt

from af3_serve.inputs.vad import VoiceActivity
from tests.support.audio_files import encode, make_clip
from tests.support.http_helpers import (
    MODEL,
    THINK_MODEL,
    TRANSCRIPTIONS,
    TRANSLATIONS,
    answer_text,
    assert_error,
    server_fixture,
    sse_data,
    until,
)
from tests.support.in_process import InProcess

api = server_fixture()
WINDOWS = [(0.0, 30.0), (30.0, 60.0), (60.0, 75.0)]


@pytest.fixture(autouse=True)
def speech_every_30_s(monkeypatch: pytest.MonkeyPatch) -> None:
    async def regions(self, pcm) -> list[tuple[int, int]]:
        step = 30 * 16000
        margin = 16000 // 2  # the plan widens each window by as much again
        return [(a + margin, min(a + step, pcm.size) - margin) for a in range(0, pcm.size, step)]

    monkeypatch.setattr(VoiceActivity, "regions", regions)


@pytest.fixture(scope="module")
def wav_75s(speech) -> bytes:
    return encode(make_clip(speech, 75.0))


def window_answers(app: InProcess, answers: dict[int, str] | None = None) -> list[str]:
    """Window i of a request answers answers[i] (default: " Window i says hello.");
    returns the transcript each window should give."""
    answers = answers or {}

    def answer(request_id: str) -> str:
        i = int(request_id.rsplit("-", 1)[1])
        return answers.get(i, f" Window {i} says hello.")

    app.engine.answer_for = answer
    return [answers.get(i, f" Window {i} says hello.").strip() for i in range(len(WINDOWS))]


async def post(app: InProcess, wav: bytes, path: str = TRANSCRIPTIONS, **form: str):
    return await app.client.post(
        path, data={"model": MODEL, **form}, files={"file": ("talk.wav", wav)}
    )


def window_prompts(app: InProcess) -> list[list[int]]:
    """The engine's prompts, in window order."""
    ids = sorted(app.engine.started, key=lambda r: int(r.rsplit("-", 1)[1]))
    return [app.engine.prompts[r] for r in ids]


async def test_json_text_and_usage(api, wav_75s: bytes) -> None:
    texts = window_answers(api)
    response = await post(api, wav_75s)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["text"] == "Window 0 says hello. Window 1 says hello. Window 2 says hello."
    assert result["text"] == " ".join(texts)
    prompts = window_prompts(api)
    audio = api.engine.model_config.hf_config.audio_token_id
    assert [p.count(audio) for p in prompts] == [750, 750, 375]
    generated = sum(len(api.engine.tokenizer.encode(" " + t)) for t in texts)
    prompt_tokens = sum(map(len, prompts))
    assert result["usage"] == {
        "type": "tokens",
        "input_tokens": prompt_tokens,
        "output_tokens": generated,
        "total_tokens": prompt_tokens + generated,
        "input_token_details": {"audio_tokens": 1875, "text_tokens": prompt_tokens - 1875},
    }
    assert set(api.engine.lora.values()) == {None}  # the base model, no thinking adapter


async def test_window_requests_carry_the_transcription_id(api, wav_75s: bytes) -> None:
    """A request's windows run as `trsc-<id>-<window>`: the id of the request (its own, not a
    chat completion's `chatcmpl-`) and the window's index."""
    await post(api, wav_75s)
    await post(api, wav_75s, path=TRANSLATIONS)
    names = [re.fullmatch(r"(trsc-[0-9a-f]{32})-(\d+)", r) for r in api.engine.started]
    assert all(names), api.engine.started
    ids = {}
    for name in names:
        ids.setdefault(name[1], []).append(int(name[2]))
    assert sorted(map(sorted, ids.values())) == [[0, 1, 2], [0, 1, 2]]


async def test_a_window_is_cut_at_512_tokens(api, speech) -> None:
    """Without an answer of its own, the fake engine repeats its ANSWER up to max_tokens."""
    response = await post(api, encode(make_clip(speech, 31.5)))
    usage = response.json()["usage"]
    assert usage["output_tokens"] == 2 * 512
    assert response.json()["text"] == " ".join([answer_text(api.engine, 512).strip()] * 2)


async def test_instruction_language_and_prompt(api, wav_75s: bytes) -> None:
    window_answers(api)
    await post(api, wav_75s, language="en", prompt="  A meeting. ")
    await post(api, wav_75s, path=TRANSLATIONS)
    engine = api.engine
    prompts = [engine.tokenizer.decode(engine.prompts[r]) for r in engine.started]
    assert len(prompts) == 6  # the two requests ran one after the other
    transcribe = "Transcribe the input speech. The speech is in English. Context: A meeting."
    assert all(transcribe in p for p in prompts[:3])
    translate = "Translate the input speech into English."
    assert all(translate in p and "Transcribe" not in p and "Context" not in p for p in prompts[3:])


async def test_text_format(api, wav_75s: bytes) -> None:
    texts = window_answers(api)
    response = await post(api, wav_75s, response_format="text")
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == " ".join(texts) + "\n"


def _srt_cues(text: str) -> list[tuple[float, float, str]]:
    second = timedelta(seconds=1)
    return [(c.start / second, c.end / second, c.content) for c in srt.parse(text)]


def _vtt_cues(text: str) -> list[tuple[float, float, str]]:
    captions = webvtt.from_buffer(io.StringIO(text)).captions
    return [(c.start_in_seconds, c.end_in_seconds, c.text) for c in captions]


# Each format's content type, its text for the three windows, and its parser's reading.
SUBTITLES = {
    "srt": (
        "application/x-subrip",
        "1\n00:00:00,000 --> 00:00:30,000\nWindow 0 says hello.\n\n"
        "2\n00:00:30,000 --> 00:01:00,000\nWindow 1 says hello.\n\n"
        "3\n00:01:00,000 --> 00:01:15,000\nWindow 2 says hello.\n",
        _srt_cues,
    ),
    "vtt": (
        "text/vtt",
        "WEBVTT\n\n00:00:00.000 --> 00:00:30.000\nWindow 0 says hello.\n\n"
        "00:00:30.000 --> 00:01:00.000\nWindow 1 says hello.\n\n"
        "00:01:00.000 --> 00:01:15.000\nWindow 2 says hello.\n",
        _vtt_cues,
    ),
}


@pytest.mark.parametrize("fmt", sorted(SUBTITLES))
async def test_subtitles_have_one_cue_per_window(api, wav_75s: bytes, fmt: str) -> None:
    content_type, expected, cues = SUBTITLES[fmt]
    window_answers(api)
    response = await post(api, wav_75s, response_format=fmt)
    assert response.headers["content-type"].startswith(content_type)
    assert response.text == expected
    said = [f"Window {i} says hello." for i in range(3)]
    assert cues(response.text) == [(a, b, text) for (a, b), text in zip(WINDOWS, said, strict=True)]


@pytest.mark.parametrize(
    ("path", "language", "task", "reported"),
    [
        (TRANSCRIPTIONS, None, "transcribe", "unknown"),
        (TRANSCRIPTIONS, "de", "transcribe", "german"),
        (TRANSLATIONS, None, "translate", "english"),
    ],
)
async def test_verbose_json_segments_are_the_windows(
    api, wav_75s: bytes, path: str, language: str | None, task: str, reported: str
) -> None:
    texts = window_answers(api)
    form = {"response_format": "verbose_json"} | ({"language": language} if language else {})
    result = (await post(api, wav_75s, path, **form)).json()
    assert (result["task"], result["language"], result["duration"]) == (task, reported, 75.0)
    assert result["text"] == " ".join(texts)
    segments = result["segments"]
    assert [(s["start"], s["end"]) for s in segments] == WINDOWS
    assert [(s["id"], s["seek"]) for s in segments] == [(0, 0), (1, 3000), (2, 6000)]
    assert [s["text"] for s in segments] == texts
    tokenizer = api.engine.tokenizer
    assert [s["tokens"] for s in segments] == [tokenizer.encode(" " + t) for t in texts]
    assert {(s["temperature"], s["avg_logprob"]) for s in segments} == {(0.0, -0.5)}
    assert all(s["compression_ratio"] > 0 for s in segments)
    assert result["usage"]["output_tokens"] == sum(len(s["tokens"]) for s in segments)


async def test_a_silent_window(api, wav_75s: bytes) -> None:
    """A window whose answer is empty once cleaned: no text, a "..." cue, the times kept."""
    window_answers(api, {1: ' The spoken content of the audio is "".'})
    text = (await post(api, wav_75s, response_format="text")).text
    assert text == "Window 0 says hello. Window 2 says hello.\n"
    cues = list(srt.parse((await post(api, wav_75s, response_format="srt")).text))
    assert [c.content for c in cues] == ["Window 0 says hello.", "...", "Window 2 says hello."]


async def test_wrapper_phrasing_is_removed_whole_and_streamed(api, wav_75s: bytes) -> None:
    window_answers(
        api,
        {
            0: ' The spoken content of the audio is "Hello there."',
            1: " The transcription of the audio is 'good morning'.",
            2: " Plain words, no wrapper.",
        },
    )
    expected = "Hello there. good morning Plain words, no wrapper."
    assert (await post(api, wav_75s)).json()["text"] == expected
    events = [json.loads(e) for e in sse_data(await post(api, wav_75s, stream="true"))]
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"] == expected


async def test_streaming_events_come_in_window_order(api, wav_75s: bytes) -> None:
    """Window 0's long answer finishes last; its deltas still come first, each token as it
    comes, then the other windows', then one done event with the whole text and usage."""
    long = " " + " ".join(f"word{i}" for i in range(40)) + "."
    texts = window_answers(api, {0: long})
    whole = (await post(api, wav_75s)).json()
    api.engine.started.clear()
    api.engine.paused = True  # until all three windows are in the engine
    streaming = asyncio.create_task(post(api, wav_75s, stream="true"))
    await until(lambda: len(api.engine.started) == 3)
    api.engine.paused = False
    data = sse_data(await streaming)
    assert "[DONE]" not in data
    events = [json.loads(d) for d in data]
    deltas = [e for e in events if e["type"] == "transcript.text.delta"]
    assert len(deltas) == len(events) - 1 > 40
    assert events[-1] == {"type": "transcript.text.done", "text": whole["text"]} | {
        "usage": whole["usage"]
    }
    # In order, token by token: window 0's words first, though its window finished last.
    streamed = "".join(e["delta"] for e in deltas)
    assert streamed == whole["text"] == " ".join(texts)
    assert api.engine.finished[-1].endswith("-0")


async def test_ten_minute_file(api, speech) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, make_clip(speech, 600.0), 16000, format="FLAC")
    response = await api.client.post(
        TRANSCRIPTIONS,
        data={"model": MODEL, "response_format": "verbose_json"},
        files={"file": ("long.flac", buffer.getvalue())},
    )
    segments = response.json()["segments"]
    assert len(segments) == 20
    assert segments[-1]["end"] == pytest.approx(600.0)
    assert [s["start"] for s in segments] == [30.0 * i for i in range(20)]


async def test_errors_name_the_field(api, speech) -> None:
    junk = await post(api, b"not audio at all" * 100)
    assert_error(junk, 400, "file", "invalid_audio")
    missing = await api.client.post(TRANSCRIPTIONS, data={"model": MODEL})
    assert_error(missing, 400, "file")
    too_short = await post(api, encode(speech[:200]))
    assert_error(too_short, 400, "file", "audio_too_short")
    one_second = encode(speech[:16000])
    assert_error(await post(api, one_second, response_format="doc"), 400, "response_format")
    assert_error(await post(api, one_second, language="xx"), 400, "language")
    assert_error(await post(api, one_second, temperature="5"), 400, "temperature")
    assert_error(await post(api, one_second, stream="maybe"), 400, "stream")
    no_model = await api.client.post(TRANSCRIPTIONS, files={"file": ("a.wav", one_second)})
    assert_error(no_model, 400, "model")
    unknown = await api.client.post(
        TRANSLATIONS, data={"model": "whisper-1"}, files={"file": ("a.wav", one_second)}
    )
    assert_error(unknown, 404, "model", "model_not_found")
    think = await api.client.post(
        TRANSCRIPTIONS, data={"model": THINK_MODEL}, files={"file": ("a.wav", one_second)}
    )
    assert_error(think, 400, "model")
    assert api.engine.started == []
