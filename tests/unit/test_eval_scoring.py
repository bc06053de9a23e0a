"""af3-eval's scoring on hand-computed examples, its datasets and its predictions file (a run
against a server: tests/e2e/test_eval_server.py)."""

import json
from pathlib import Path

import pytest

from af3_serve.tools.evaluate import load_dataset, load_predictions
from af3_serve.tools.scoring import choice_of, normalize, parse_choices, score

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
