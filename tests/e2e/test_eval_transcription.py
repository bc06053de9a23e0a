"""af3-eval scores transcription questions on what /v1/audio/transcriptions answers: the
server's windows cut at the pauses, so a recording past the 600 s the model hears at once
is transcribed too. Against the session's real af3-serve."""

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import soundfile as sf

from benchmarks.spoken import SENTENCES, meeting
from tests.support.server import API_KEY

pytestmark = pytest.mark.engine

MODEL = "audio-flamingo-3"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A 12-min meeting to transcribe, and a multiple-choice question about a short clip."""
    root = tmp_path_factory.mktemp("eval-long")
    recording = meeting(12 * 60)
    sf.write(root / "meeting.flac", recording.audio, 16000, format="FLAC", subtype="PCM_16")
    sf.write(root / "short.wav", recording.audio[: 5 * 16000], 16000, subtype="PCM_16")
    said = " ".join(SENTENCES[i % len(SENTENCES)] for i in range(len(recording.speech)))
    entries = [
        {
            "id": "meeting",
            "sound": "meeting.flac",
            "conversations": [
                {"from": "human", "value": "<sound>\nTranscribe the input speech."},
                {"from": "gpt", "value": said},
            ],
        },
        {
            "id": "choice",
            "sound": "short.wav",
            "conversations": [
                {"from": "human", "value": "<sound>\nWho speaks?\n(A) a man\n(B) a dog"},
                {"from": "gpt", "value": "(A) a man"},
            ],
        },
    ]
    path = root / "set.json"
    path.write_text(json.dumps(entries))
    return path


def run_eval(server, dataset: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "af3_serve.tools.evaluate",
        str(dataset),
        *("--url", server.url, "--api-key", API_KEY, "--predictions", str(out)),
        *("--max-tokens", "4", *extra),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def test_transcription_questions_use_the_transcription_endpoint(
    server, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "predictions.jsonl"
    result = run_eval(server, dataset, out)
    assert result.returncode == 0, result.stderr[-2000:]
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["meeting"]["audio_seconds"] > 600
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, timeout=900)
    with (dataset.parent / "meeting.flac").open("rb") as f:
        expected = client.audio.transcriptions.create(model=MODEL, file=f).text
    assert records["meeting"]["answer"] == expected  # greedy: the endpoint's transcript
    assert "WER" in result.stdout

    # Sent whole to chat instead, the 12-min recording is past the model's 600 s.
    chat = run_eval(server, dataset, tmp_path / "chat.jsonl", "--transcribe-with-chat")
    assert chat.returncode == 1 and "600" in chat.stderr
