"""A long meeting transcribed by a real af3-serve through the official `openai` client:
espeak-ng sentences with pauses known to the sample and a 40-s silence every 3 minutes
(benchmarks/spoken.py). One request takes the whole recording, whole or streamed; its
segments follow the speech; silence never reaches the engine; a client that leaves aborts
the windows still in the engine."""

import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from benchmarks.spoken import Recording, meeting, score_plan
from tests.support.server import API_KEY

pytestmark = pytest.mark.engine

MODEL = "audio-flamingo-3"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
RATE = 16000


@pytest.fixture(scope="module")
def openai_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=1800)


@pytest.fixture(scope="module")
def meeting_45_min(tmp_path_factory) -> tuple[Path, Recording]:
    recording = meeting(45 * 60)
    path = tmp_path_factory.mktemp("meeting") / "meeting.flac"
    sf.write(path, recording.audio, RATE, format="FLAC", subtype="PCM_16")
    return path, recording


def metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_a_45_minute_meeting_in_one_request(openai_client, meeting_45_min) -> None:
    path, recording = meeting_45_min
    assert recording.seconds > 45 * 60  # past the 600 s the model hears at once
    with path.open("rb") as f:
        result = openai_client.audio.transcriptions.create(
            model=MODEL,
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["segment"],
        )
    assert result.duration == pytest.approx(recording.seconds, abs=1e-3)
    windows = [(round(s.start * RATE), round(s.end * RATE)) for s in result.segments]
    score = score_plan(windows, recording.speech, recording.audio.size)
    assert score.cuts_in_speech == 0
    assert score.speech_covered >= 0.98
    assert score.longest_pause_sent_s <= 2.0
    # The 40-s silences (14 of them) and the pauses are not sent.
    assert score.engine_seconds < recording.seconds - 14 * 38
    assert all(s.end - s.start <= 30.0 for s in result.segments)
    assert all(s.tokens for s in result.segments)
    assert result.text == " ".join(s.text for s in result.segments if s.text)
    # Streamed: the same transcript (greedy), in order.
    with path.open("rb") as f:
        events = list(openai_client.audio.transcriptions.create(model=MODEL, file=f, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert events[-1].type == "transcript.text.done"
    assert "".join(deltas) == events[-1].text == result.text


def test_silence_never_reaches_the_engine(server, openai_client) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(120 * RATE, np.float32), RATE, format="FLAC")
    prompts_before = metric(server, "vllm:prompt_tokens_total")
    result = openai_client.audio.transcriptions.create(
        model=MODEL, file=("silence.flac", buffer.getvalue()), response_format="verbose_json"
    )
    assert (result.text, result.segments, result.duration) == ("", [], 120.0)
    assert metric(server, "vllm:prompt_tokens_total") == prompts_before


def test_a_client_that_leaves_aborts_its_windows(server, meeting_45_min) -> None:
    path, _ = meeting_45_min
    finished = 'vllm:request_success_total{engine="0"'
    finished_before = metric(server, finished)
    with (
        path.open("rb") as f,
        httpx.stream(
            "POST",
            f"{server.url}/v1/audio/transcriptions",
            headers=AUTH,
            data={"model": MODEL, "stream": "true"},
            files={"file": ("meeting.flac", f)},
            timeout=600,
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["type"].endswith("delta"):
                break  # the first words are here: leave
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and metric(server, "vllm:num_requests_running") > 0:
        time.sleep(0.2)
    assert metric(server, "vllm:num_requests_running") == 0
    assert metric(server, "vllm:num_requests_waiting") == 0
    # Far fewer than the recording's ~100 windows ran to their end.
    assert metric(server, finished) - finished_before < 20
