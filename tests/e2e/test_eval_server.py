"""af3-eval as a process: a resumable run against the session server (its scoring:
tests/unit/test_eval_scoring.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import API_KEY

ASR = "Transcribe the input speech."
SAID = ["hello world", "good morning", "open the door", "the sky is blue"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Espeak-ng clips with known text: two transcription and two multiple-choice items."""
    root = tmp_path_factory.mktemp("eval")
    (root / "clips").mkdir()
    entries = []
    for i, text in enumerate(SAID):
        subprocess.run(["espeak-ng", "-w", str(root / "clips" / f"{i}.wav"), text], check=True)
        if i < 2:
            human, gpt = ASR, text
        else:
            human, gpt = f"What is said?\n(A) {SAID[i]}\n(B) {SAID[i - 2]}", f"(A) {text}"
        turns = [{"from": "human", "value": f"<sound>\n{human}"}, {"from": "gpt", "value": gpt}]
        entries.append({"id": f"q{i}", "sound": f"clips/{i}.wav", "conversations": turns})
    path = root / "set.json"
    path.write_text(json.dumps(entries))
    return path


def run_eval(server, dataset: Path, out: Path, report: Path, *extra: str):
    command = [
        sys.executable,
        "-m",
        "af3_serve.tools.evaluate",
        dataset.name,
        *("--url", server.url, "--api-key", API_KEY, "--predictions", str(out)),
        *("--concurrency", "2", "--max-tokens", "4", "--report", str(report), *extra),
    ]
    # From another folder: the sound paths resolve against the dataset's own.
    return subprocess.run(command, capture_output=True, text=True, cwd=dataset.parent, timeout=300)


def test_eval_resumes_where_it_stopped(server, dataset: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "predictions.jsonl", tmp_path / "report.json"
    first = run_eval(server, dataset, out, report, "--limit", "2")
    assert first.returncode == 0, first.stderr
    answered = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(answered) == 2
    assert json.loads(report.read_text())["throughput"]["answered"] == 2

    second = run_eval(server, dataset, out, report)
    assert second.returncode == 0, second.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[:2] == answered  # kept, not asked again
    assert sorted(r["id"] for r in records) == ["q0", "q1", "q2", "q3"]
    for r in records:
        assert set(r) == {"id", "question", "answer", "reference", "audio_seconds", "latency_s"}
        assert "<sound>" not in r["question"]
        assert 0.5 < r["audio_seconds"] < 5 and r["latency_s"] > 0

    result = json.loads(report.read_text())
    throughput, scores = result["throughput"], result["scores"]
    assert throughput["answered"] == 2 and throughput["failed"] == 0
    assert throughput["questions_per_s"] > 0 and throughput["audio_hours_per_hour"] > 0
    assert scores["scored"] == 4
    assert scores["multiple_choice"] == 2 and scores["transcription"] == 2
    assert scores["wer"] is not None and scores["cer"] is not None
    assert "questions/s" in second.stdout and "WER" in second.stdout

    third = run_eval(server, dataset, out, report)  # nothing left to ask
    assert third.returncode == 0 and json.loads(report.read_text())["throughput"]["answered"] == 0
    assert len(out.read_text().splitlines()) == 4


def test_a_wrong_key_stops_the_run_at_once(server, dataset: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "predictions.jsonl", tmp_path / "report.json"
    result = run_eval(server, dataset, out, report, "--api-key", "wrong")
    # Refused at its first request (the served model's name, from /v1/models): nothing written.
    assert result.returncode == 1 and "invalid API key" in result.stderr
    assert not out.exists() and not report.exists()
