"""af3-eval: scoring on hand-computed examples, and a resumable run against the server."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from af3_serve.tools.evaluate import load_dataset, load_predictions
from af3_serve.tools.scoring import choice_of, normalize, parse_choices, score
from tests.server import API_KEY

MC = "Which animal is heard?\n(A) dog\n(B) cat\n(C) hot dog"
ASR = "Transcribe the input speech."


def test_parse_choices() -> None:
    assert parse_choices(MC) == {"A": "dog", "B": "cat", "C": "hot dog"}
    assert parse_choices("Q: which? (A) rain (B) wind") == {"A": "rain", "B": "wind"}
    assert parse_choices("Pick:\nA. rain\nB) wind\n") == {"A": "rain", "B": "wind"}
    assert parse_choices("(A) only one option") == {}
    assert parse_choices("What is said?") == {}


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("(B) cat", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B) cat", "B"),
        ("B", "B"),
        ("Cat!", "B"),  # the option's text as the whole answer
        ("The answer is (C) hot dog.", "C"),
        ("I hear a cat meowing.", "B"),  # one option mentioned
        ("A dog and a hot dog", None),  # two options mentioned
        ("(D) horse", None),  # not an option
        ("", None),
    ],
)
def test_choice_of(answer: str, letter: str | None) -> None:
    assert choice_of(answer, parse_choices(MC)) == letter


def test_scores_hand_computed() -> None:
    def p(question: str, answer: str, reference: str | None) -> dict:
        return {"question": question, "answer": answer, "reference": reference}

    scores = score(
        [
            p(MC, "(B) cat", "(B) cat"),  # exact, right
            p(MC, "B.", "(B) cat"),  # right, not exact
            p(MC, "A dog.", "cat"),  # picks A: wrong
            # AF3's wrapper is removed; "fox" -> "box" and "jumps" inserted: 2 of 4 words,
            # 1 substituted + 6 inserted (" jumps") of 19 characters.
            p(
                ASR,
                'The spoken content of the audio is "the quick brown box jumps".',
                "The quick brown fox.",
            ),
            p(ASR, "Hello, world!", "hello world"),  # exact after normalizing, no errors
            p(ASR, "anything", None),  # no reference: not scored
        ]
    )
    assert scores.scored == 5
    assert scores.exact_match == pytest.approx(2 / 5)
    assert scores.multiple_choice == 3
    assert scores.multiple_choice_accuracy == pytest.approx(2 / 3)
    assert scores.transcription == 2
    assert scores.wer == pytest.approx(2 / 6)  # (2 + 0) errors over (4 + 2) words
    assert scores.cer == pytest.approx(7 / 30)  # (7 + 0) errors over (19 + 11) characters


def test_normalize() -> None:
    assert normalize("  Don't STOP, it's “fine”!  ") == "dont stop its fine"


def test_dataset_paths_are_relative_to_the_dataset(tmp_path: Path) -> None:
    (tmp_path / "sets").mkdir()
    dataset = tmp_path / "sets" / "d.json"
    entry = {
        "id": 7,
        "sound": "clips/a.wav",
        "conversations": [{"from": "human", "value": "<sound>\nQ?"}],
    }
    dataset.write_text(json.dumps([entry]))
    (item,) = load_dataset(dataset)
    assert (item.id, item.question, item.reference) == ("7", "Q?", None)
    assert item.sounds == (tmp_path / "sets" / "clips" / "a.wav",)
    dataset.write_text(json.dumps([entry, entry]))
    with pytest.raises(ValueError, match="ids repeat"):
        load_dataset(dataset)


def test_a_line_cut_off_by_a_kill_is_dropped(tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    out.write_text('{"id": "a"}\n{"id": "b", "ans')
    assert load_predictions(out) == [{"id": "a"}]
    assert out.read_text() == '{"id": "a"}\n'


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
