"""The transcription endpoints' window plan over HTTP, in-process on the fake engine: speech
spoken by espeak-ng with pauses placed to the sample (benchmarks/spoken.py) goes through the
real voice-activity detector, and the segments, the engine's prompts and what is never sent
are checked against where the sentences really are. Also the transcription's own limits,
its windows in flight, and a client that leaves."""

import asyncio
import io
import json

import httpx
import numpy as np
import pytest
import soundfile as sf
import srt

from af3_serve.config import SettingsError, parse_args
from af3_serve.inputs.vad import VoiceActivity, speech_regions
from af3_serve.speech import segmentation
from benchmarks.spoken import Recording, score_plan, spoken_recording, spoken_sentence
from tests.support.audio_files import encode
from tests.support.http_helpers import (
    MODEL,
    TRANSCRIPTIONS,
    TRANSLATIONS,
    assert_error,
    server_fixture,
    sse_data,
    until,
)
from tests.support.in_process import AUTH, InProcess

RATE = 16000
# 14 sentences; the pauses between them as a meeting has them, and one 10-s silence.
PAUSES = [0.35, 0.5, 0.9, 0.6, 0.4, 0.7, 0.35, 10.0, 0.5, 0.8, 0.45, 0.6, 0.35]

api = server_fixture()
short_limit = server_fixture("--max-transcription-seconds", "60")
two_in_flight = server_fixture("--transcription-windows-in-flight", "2")
small_backlog = server_fixture(
    "--max-transcription-seconds", "100", "--max-queued-audio-seconds", "100"
)


@pytest.fixture(scope="module")
def meeting() -> Recording:
    return spoken_recording(PAUSES, lead_s=2.0, tail_s=3.0)


async def post(app: InProcess, audio: bytes, path: str = TRANSCRIPTIONS, **form: str):
    return await app.client.post(
        path, data={"model": MODEL, **form}, files={"file": ("talk.wav", audio)}
    )


def in_samples(segments: list[dict]) -> list[tuple[int, int]]:
    return [(round(s["start"] * RATE), round(s["end"] * RATE)) for s in segments]


async def test_segments_follow_the_speech(api, meeting: Recording) -> None:
    response = await post(api, encode(meeting.audio), response_format="verbose_json")
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["duration"] == pytest.approx(meeting.seconds, abs=1e-3)
    segments = result["segments"]
    score = score_plan(in_samples(segments), meeting.speech, meeting.audio.size)
    assert score.cuts_in_speech == 0, segments
    assert score.speech_covered >= 0.98
    assert score.longest_pause_sent_s <= 2.0
    assert all(0 < s["end"] - s["start"] <= 30.0 for s in segments)
    # The sentences before the 10-s silence run past 30 s together: cut at a pause there.
    before, after = meeting.speech[7][1] / RATE, meeting.speech[8][0] / RATE
    assert (before - meeting.speech[0][0] / RATE) > 29.5
    assert len([s for s in segments if s["end"] <= before + segmentation.PAD_S + 0.3]) >= 2
    assert not any(s["start"] < after - 2 and s["end"] > before + 2 for s in segments)
    # The leading (2 s) and trailing (3 s) silence are not sent, but for the margins.
    margin = segmentation.PAD_S + 0.3
    assert segments[0]["start"] >= meeting.speech[0][0] / RATE - margin
    assert segments[-1]["end"] <= meeting.speech[-1][1] / RATE + margin
    # Each window's prompt carries its own audio: 25 tokens a second of the segment.
    engine = api.engine
    ids = sorted(engine.started, key=lambda r: int(r.rsplit("-", 1)[1]))
    audio_token = engine.model_config.hf_config.audio_token_id
    tokens = [engine.prompts[r].count(audio_token) for r in ids]
    assert len(tokens) == len(segments)
    assert all(
        abs(t - 25 * (s["end"] - s["start"])) <= 1 for t, s in zip(tokens, segments, strict=True)
    )
    assert result["usage"]["input_token_details"]["audio_tokens"] == sum(tokens)


async def test_subtitles_carry_the_speech_times(api, meeting: Recording) -> None:
    wav = encode(meeting.audio)
    segments = (await post(api, wav, response_format="verbose_json")).json()["segments"]
    cues = list(srt.parse((await post(api, wav, response_format="srt")).text))
    assert [(c.start.total_seconds(), c.end.total_seconds()) for c in cues] == [
        (pytest.approx(s["start"], abs=1e-3), pytest.approx(s["end"], abs=1e-3)) for s in segments
    ]


async def test_any_rate_and_channels_give_the_same_windows(api, meeting: Recording) -> None:
    """The upload is downmixed and resampled block by block into the request's one int16
    buffer; the plan barely moves."""
    wav = encode(meeting.audio)
    plain = (await post(api, wav, response_format="verbose_json")).json()["segments"]
    stereo_44k = np.stack([meeting.audio, meeting.audio * 0.5], axis=1)
    stereo_44k = np.stack(
        [np.interp(np.arange(0, meeting.audio.size, RATE / 44100), np.arange(meeting.audio.size), c)
         for c in stereo_44k.T], axis=1
    ).astype(np.float32)  # fmt: skip
    buffer = io.BytesIO()
    sf.write(buffer, stereo_44k, 44100, format="FLAC")
    other = (await post(api, buffer.getvalue(), response_format="verbose_json")).json()
    assert other["duration"] == pytest.approx(meeting.seconds, abs=0.01)
    assert len(other["segments"]) == len(plain)
    for a, b in zip(other["segments"], plain, strict=True):
        assert a["start"] == pytest.approx(b["start"], abs=0.1)
        assert a["end"] == pytest.approx(b["end"], abs=0.1)


@pytest.mark.parametrize("kind", ["silence", "faint noise"])
async def test_no_speech_no_engine_request(api, kind: str) -> None:
    audio = np.zeros(20 * RATE, np.float32)
    if kind == "faint noise":
        audio = np.random.default_rng(0).normal(0, 1e-3, audio.size).astype(np.float32)
    wav = encode(audio)
    assert (await post(api, wav)).json()["text"] == ""
    verbose = (await post(api, wav, path=TRANSLATIONS, response_format="verbose_json")).json()
    assert (verbose["text"], verbose["segments"], verbose["duration"]) == ("", [], 20.0)
    assert verbose["usage"]["total_tokens"] == 0
    assert (await post(api, wav, response_format="srt")).text == ""
    assert (await post(api, wav, response_format="vtt")).text == "WEBVTT\n\n"
    events = [json.loads(e) for e in sse_data(await post(api, wav, stream="true"))]
    assert [(e["type"], e["text"]) for e in events] == [("transcript.text.done", "")]
    assert api.engine.started == []


async def test_a_file_past_the_chat_limit_is_transcribed(api) -> None:
    """700 s is over the 600 s the model hears at once; the transcription takes it, and
    sends the engine only the one sentence in it."""
    sentence = spoken_sentence(3)
    audio = np.zeros(700 * RATE, np.float32)
    at = 650 * RATE
    audio[at : at + sentence.size] = sentence
    response = await post(api, encode(audio), response_format="verbose_json")
    assert response.status_code == 200, response.text
    (segment,) = response.json()["segments"]
    margin = segmentation.PAD_S + 0.3  # the window's margin, and the detector's
    assert segment["start"] == pytest.approx(650.0, abs=margin)
    assert segment["end"] == pytest.approx((at + sentence.size) / RATE, abs=margin)
    assert len(api.engine.started) == 1


async def test_the_transcription_limit(short_limit) -> None:
    too_long = await post(short_limit, encode(np.zeros(61 * RATE, np.float32)))
    assert_error(too_long, 413, "file", "audio_too_long")
    message = too_long.json()["error"]["message"]
    assert "61.0 s" in message and "60 s" in message and "--max-transcription-seconds" in message
    assert (await post(short_limit, encode(np.zeros(59 * RATE, np.float32)))).status_code == 200
    assert short_limit.engine.started == []


async def test_bad_audio_names_the_file(api, meeting: Recording) -> None:
    wav = encode(meeting.audio)
    assert_error(await post(api, b"not audio at all" * 100), 400, "file", "invalid_audio")
    assert_error(await post(api, wav[:40]), 400, "file", "invalid_audio")  # header cut short
    assert_error(await post(api, encode(np.zeros(200, np.float32))), 400, "file")
    assert api.engine.started == []


async def test_timestamp_granularities(api, meeting: Recording) -> None:
    wav = encode(meeting.audio[: 10 * RATE])
    segment = await api.client.post(
        TRANSCRIPTIONS,
        data={
            "model": MODEL,
            "response_format": "verbose_json",
            "timestamp_granularities[]": "segment",
        },
        files={"file": ("talk.wav", wav)},
    )
    assert segment.status_code == 200 and segment.json()["segments"]
    word = await api.client.post(
        TRANSCRIPTIONS,
        data={"model": MODEL, "timestamp_granularities[]": ["segment", "word"]},
        files={"file": ("talk.wav", wav)},
    )
    assert_error(word, 400, "timestamp_granularities[]")
    assert "word timings" in word.json()["error"]["message"]


@pytest.fixture
def speech_every_30_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector pinned to find speech in every 30-s stretch: the windows are known."""

    async def regions(self, pcm: np.ndarray) -> list[tuple[int, int]]:
        step = 30 * RATE
        margin = RATE // 2  # the plan widens each window by as much again
        return [(a + margin, min(a + step, pcm.size) - margin) for a in range(0, pcm.size, step)]

    monkeypatch.setattr(VoiceActivity, "regions", regions)


async def test_windows_in_flight_are_bounded_and_in_order(two_in_flight, speech_every_30_s) -> None:
    engine = two_in_flight.engine
    engine.paused = True
    request = asyncio.create_task(post(two_in_flight, encode(np.zeros(150 * RATE, np.float32))))
    await until(lambda: len(engine.started) == 2)
    await asyncio.sleep(0.3)
    assert len(engine.started) == 2  # the other three wait for a place
    engine.paused = False
    assert (await request).status_code == 200
    assert [int(r.rsplit("-", 1)[1]) for r in engine.started] == [0, 1, 2, 3, 4]
    assert len(engine.finished) == 5 and engine.aborted == []


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_leaves_aborts_every_window(
    two_in_flight, speech_every_30_s, stream: bool
) -> None:
    """Raw ASGI, so the disconnect comes when the test says: the windows in the engine are
    aborted, the ones waiting never start, and the admission is released."""
    engine = two_in_flight.engine
    engine.paused = True
    body = httpx.Request(
        "POST",
        "http://af3-serve" + TRANSCRIPTIONS,
        data={"model": MODEL, "stream": str(stream).lower()},
        files={"file": ("talk.wav", encode(np.zeros(150 * RATE, np.float32)))},
        headers=AUTH,
    )
    content = body.read()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": TRANSCRIPTIONS,
        "raw_path": TRANSCRIPTIONS.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in body.headers.items()],
        "client": ("127.0.0.1", 40001),
        "server": ("af3-serve", 80),
    }
    left = asyncio.Event()
    sent_body = False

    async def receive() -> dict:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": content, "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        pass

    call = asyncio.create_task(two_in_flight.app(scope, receive, send))
    await until(lambda: len(engine.started) == 2)
    left.set()
    await asyncio.wait_for(call, 10)
    await asyncio.sleep(0.2)
    assert sorted(engine.started) == sorted(engine.aborted)
    assert len(engine.started) == 2 and engine.finished == []
    assert two_in_flight.app.state.runtime.admission.pending == 0


async def test_admission_counts_the_files_seconds(small_backlog, speech_every_30_s) -> None:
    engine = small_backlog.engine
    engine.paused = True
    first = asyncio.create_task(post(small_backlog, encode(np.zeros(80 * RATE, np.float32))))
    await until(lambda: len(engine.started) > 0)
    second = await post(small_backlog, encode(np.zeros(30 * RATE, np.float32)))
    assert_error(second, 503, None, "server_overloaded")
    engine.paused = False
    assert (await first).status_code == 200
    assert (await post(small_backlog, encode(np.zeros(30 * RATE, np.float32)))).status_code == 200


async def test_the_workers_find_what_this_process_finds(meeting: Recording) -> None:
    """Blocks spread over two worker processes, against the same blocks in this thread."""
    pcm = np.rint(meeting.audio * 32768).astype(np.int16)
    pcm = np.concatenate([pcm, pcm, pcm])  # 3.5 min: four 60-s blocks
    voice = VoiceActivity(2)
    known: dict = {}  # a growing recording's whole blocks, as a realtime turn keeps them
    try:
        regions = await voice.regions(pcm)
        assert await voice.regions(pcm[: 10 * RATE]) == speech_regions(pcm[: 10 * RATE])
        grown = [await voice.regions(pcm[: s * RATE], known) for s in (130, 190)]
        # Whole blocks ending a second or more before the end are kept: three by 190 s.
        assert len(known) == 3 and grown[1] == speech_regions(pcm[: 190 * RATE])
        assert await voice.regions(pcm, known) == regions
    finally:
        await voice.aclose()
    assert regions == speech_regions(pcm)
    assert len(regions) >= 3 * len(meeting.speech) - 3


upload_cap = server_fixture("--max-transcription-bytes", "200000", "--max-request-bytes", "1000")


async def test_transcription_uploads_have_their_own_size_cap(upload_cap) -> None:
    small = encode(np.zeros(5 * RATE, np.float32))  # 160 kB: over the chat cap, not this one
    assert (await post(upload_cap, small)).status_code == 200
    big = await post(upload_cap, encode(np.zeros(7 * RATE, np.float32)))
    assert_error(big, 413, None, "request_too_large")
    assert "200000 bytes" in big.json()["error"]["message"]


@pytest.mark.parametrize(
    ("flags", "refused"),
    [
        (["--max-transcription-seconds", "0"], "--max-transcription-seconds must be above 0"),
        (["--transcription-windows-in-flight", "0"], "at least 1"),
        (["--vad-workers", "0"], "at least 1"),
    ],
)
def test_transcription_settings_are_checked(flags: list[str], refused: str) -> None:
    with pytest.raises(SettingsError, match=refused):
        parse_args(flags)
    assert parse_args([]).transcription_seconds_limit == 3 * 3600
    # Never past what admission can hold at once.
    capped = parse_args(["--max-queued-audio-seconds", "1000"])
    assert capped.transcription_seconds_limit == 1000


def test_speech_past_30_s_is_cut_at_its_quietest() -> None:
    """70 s without a pause: cut where it is quietest in each window's second half (a
    40-ms dip), never inside the louder speech around it."""
    rng = np.random.default_rng(0)
    pcm = (rng.normal(0, 3000, 70 * RATE)).clip(-32768, 32767).astype(np.int16)
    dips = [int(22.5 * RATE), int(47.0 * RATE)]
    for d in dips:
        pcm[d : d + 640] //= 100
    windows = segmentation.plan_windows(pcm, [(0, pcm.size)])
    assert [(w.start, w.end) for w in windows][0][0] == 0 and windows[-1].end == pcm.size
    cuts = [w.end for w in windows[:-1]]
    assert len(cuts) == 2
    for cut, dip in zip(cuts, dips, strict=True):
        assert dip <= cut <= dip + 640
    assert all(w.samples <= 30 * RATE for w in windows)
    assert all(a.end == b.start for a, b in zip(windows, windows[1:], strict=False))


def test_regions_are_packed_up_to_30_s_and_long_pauses_end_a_window() -> None:
    pcm = np.zeros(120 * RATE, np.int16)
    s = RATE
    regions = [(1 * s, 9 * s), (10 * s, 20 * s), (21 * s, 29 * s), (30 * s, 35 * s)]
    regions += [(38 * s, 40 * s), (40 * s + s // 2, 45 * s)]
    windows = [(w.start / s, w.end / s) for w in segmentation.plan_windows(pcm, regions)]
    # 1-29 s fits one window (with its 0.5-s margins); 30-35 s would make it 34 s; the 3-s
    # pause ends the next. Margins stop at half a pause.
    assert windows == [(0.5, 29.5), (29.5, 35.5), (37.5, 45.5)]


def test_a_full_window_is_cut_at_a_sentences_pause() -> None:
    """Not at the last pause before the region that does not fit (a comma's, 0.2 s), but at
    the last one of 0.3 s or more in the window's second half: a sentence's end."""
    pcm = np.zeros(120 * RATE, np.int16)
    s = RATE
    ends = [3, 8, 14, 16.2, 20.1, 23, 26.3, 29.1]  # a 1.2-s pause after 16.2 s
    starts = [1, 3.3, 8.3, 14.3, 17.4, 20.3, 23.2, 26.5]
    regions = [(int(a * s), int(b * s)) for a, b in zip(starts, ends, strict=True)]
    regions.append((int(29.3 * s), int(33 * s)))
    windows = segmentation.plan_windows(pcm, regions)
    assert [round(w.end / s, 1) for w in windows[:1]] == [16.2 + 0.5]
    assert round(windows[1].start / s, 1) == 17.4 - 0.5
    assert windows[-1].end == int(33.5 * s)


async def test_a_detector_worker_that_dies_costs_one_request(api, meeting: Recording) -> None:
    wav = encode(meeting.audio[: 20 * RATE])
    assert (await post(api, wav)).status_code == 200
    voice = api.app.state.runtime.inputs.voice
    for worker in voice._all:
        worker.kill()
        await worker.wait()
    assert_error(await post(api, wav), 503, None, "server_error")
    again = await post(api, wav, response_format="verbose_json")  # new workers start
    assert again.status_code == 200 and again.json()["segments"]
