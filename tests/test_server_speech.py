"""OpenAI's speech-to-text API through the official client against a real af3-serve."""

import io
from datetime import timedelta
from pathlib import Path

import httpx
import openai
import pytest
import soundfile as sf
import srt
import webvtt

from af3_serve.speech.transcripts import clean
from tests.audio_files import encode
from tests.conftest import make_clip
from tests.server import API_KEY

MODEL = "audio-flamingo-3"


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def wav_75s(speech, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("speech") / "talk.wav"
    path.write_bytes(encode(make_clip(speech, 75.0)))
    return path


def test_transcription_json(client, espeak_wav: Path) -> None:
    with espeak_wav.open("rb") as f:
        result = client.audio.transcriptions.create(model=MODEL, file=f, language="en")
    assert isinstance(result.text, str)
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0


def test_transcription_text(client, espeak_wav: Path) -> None:
    with espeak_wav.open("rb") as f:
        result = client.audio.transcriptions.create(model=MODEL, file=f, response_format="text")
    assert isinstance(result, str)


def test_verbose_json_segments_are_the_30s_windows(client, wav_75s: Path) -> None:
    with wav_75s.open("rb") as f:
        result = client.audio.transcriptions.create(
            model=MODEL, file=f, response_format="verbose_json", prompt="A meeting."
        )
    assert result.duration == pytest.approx(75.0)
    assert [(s.start, s.end) for s in result.segments] == [(0, 30), (30, 60), (60, 75)]
    assert result.text == " ".join(s.text for s in result.segments if s.text)
    assert all(s.tokens for s in result.segments)


def covers_without_gaps(spans: list[tuple[float, float]], duration: float) -> bool:
    ends_meet = all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    return spans[0][0] == 0 and ends_meet and spans[-1][1] == pytest.approx(duration)


def test_srt_parses_and_covers_the_audio(client, wav_75s: Path) -> None:
    with wav_75s.open("rb") as f:
        body = client.audio.transcriptions.create(model=MODEL, file=f, response_format="srt")
    cues = list(srt.parse(body))
    spans = [(c.start / timedelta(seconds=1), c.end / timedelta(seconds=1)) for c in cues]
    assert covers_without_gaps(spans, 75.0)


def test_vtt_parses_and_covers_the_audio(client, wav_75s: Path) -> None:
    with wav_75s.open("rb") as f:
        body = client.audio.transcriptions.create(model=MODEL, file=f, response_format="vtt")
    cues = webvtt.from_buffer(io.StringIO(body)).captions
    spans = [
        (
            c.start_in_seconds + c.start_time.milliseconds / 1000,
            c.end_in_seconds + c.end_time.milliseconds / 1000,
        )
        for c in cues
    ]
    assert covers_without_gaps(spans, 75.0)


def test_streaming_deltas_add_up_to_the_final_text(client, wav_75s: Path) -> None:
    with wav_75s.open("rb") as f:
        events = list(client.audio.transcriptions.create(model=MODEL, file=f, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert len(done) == 1 and events[-1] is done[0]
    assert "".join(deltas) == done[0].text
    with wav_75s.open("rb") as f:
        whole = client.audio.transcriptions.create(model=MODEL, file=f)
    assert done[0].text == whole.text  # greedy: the same transcript either way


def test_translation(client, espeak_wav: Path) -> None:
    with espeak_wav.open("rb") as f:
        result = client.audio.translations.create(model=MODEL, file=f)
    assert isinstance(result.text, str)
    with espeak_wav.open("rb") as f:
        verbose = client.audio.translations.create(
            model=MODEL, file=f, response_format="verbose_json"
        )
    assert verbose.language == "english"


def test_ten_minute_file(client, speech) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, make_clip(speech, 600.0), 16000, format="FLAC")
    buffer.name = "long.flac"
    buffer.seek(0)
    result = client.audio.transcriptions.create(
        model=MODEL, file=buffer, response_format="verbose_json"
    )
    assert len(result.segments) == 20
    assert result.segments[-1].end == pytest.approx(600.0)


def test_errors_name_the_field(server, speech) -> None:
    url = f"{server.url}/v1/audio/transcriptions"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    junk = httpx.post(
        url,
        headers=auth,
        data={"model": MODEL},
        files={"file": ("a.wav", b"not audio at all" * 100)},
    )
    assert junk.status_code == 400 and junk.json()["error"]["param"] == "file"
    missing = httpx.post(url, headers=auth, data={"model": MODEL})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    too_long = httpx.post(
        url,
        headers=auth,
        data={"model": MODEL},
        timeout=120,
        files={"file": ("a.wav", encode(make_clip(speech, 601.0)))},
    )
    assert too_long.status_code == 413 and too_long.json()["error"]["param"] == "file"
    bad_format = httpx.post(
        url,
        headers=auth,
        data={"model": MODEL, "response_format": "doc"},
        files={"file": ("a.wav", encode(speech[:16000]))},
    )
    assert bad_format.status_code == 400
    assert bad_format.json()["error"]["param"] == "response_format"


@pytest.mark.parametrize(
    ("answer", "transcript"),
    [
        ('The spoken content of the audio is "Hello there."', "Hello there."),
        ("The transcription of the audio is 'good morning'.", "good morning"),
        ("Plain words, no wrapper.", "Plain words, no wrapper."),
        ("The cat sat.", "The cat sat."),
    ],
)
def test_wrapper_phrasing_is_removed(answer: str, transcript: str) -> None:
    assert clean(answer) == transcript


@pytest.mark.parametrize("size", [1, 3, 7])
def test_wrapper_removal_is_the_same_when_streamed(size: int) -> None:
    from af3_serve.speech.transcripts import TranscriptCleaner

    for answer in ('The spoken content of the audio is "Hello there."', "The cat sat."):
        cleaner = TranscriptCleaner()
        pieces = [cleaner.feed(answer[i : i + size]) for i in range(0, len(answer), size)]
        assert ("".join(pieces) + cleaner.finish()).strip() == clean(answer)
