"""Scores for AF3 answers: exact match, multiple-choice accuracy, and WER/CER for
transcription questions."""

import re
import string
from collections.abc import Iterable
from dataclasses import dataclass

import jiwer

from af3_serve.transcript_cleaner import clean

# "(A) text" anywhere (inline or one a line), or "A. text" / "A) text" starting a line.
_CHOICE = re.compile(
    r"\(([A-Z])\)[ \t]*(.+?)(?=[ \t]+\([A-Z]\)|[ \t]*$)|^[ \t]*([A-Z])[.)][ \t]+(.+?)[ \t]*$",
    re.M,
)
# An answer that starts with its letter: "(B)", "(B) piano", "B.", "B) piano", "B: ...", "B".
_LEADING_LETTER = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):](?=\s|$)|([A-Z])\s*$)")
_PARENTHESIZED = re.compile(r"\(([A-Z])\)")
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}“”‘’«»…–—]")


def normalize(text: str) -> str:
    """Lower case, apostrophes dropped, other punctuation as spaces, spaces collapsed."""
    text = re.sub(r"['’]", "", text.lower())
    return " ".join(_PUNCTUATION.sub(" ", text).split())


def parse_choices(question: str) -> dict[str, str]:
    """The options of a multiple-choice question, {"A": "text", ...}: letters must run
    A, B, C... in order, so a stray "Q: ..." line is not an option; fewer than two is none."""
    choices: dict[str, str] = {}
    for m in _CHOICE.finditer(question):
        letter, text = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if letter == chr(ord("A") + len(choices)):
            choices[letter] = text.strip()
    return choices if len(choices) >= 2 else {}


def choice_of(answer: str, choices: dict[str, str]) -> str | None:
    """Which option an answer picks: its leading letter, else the option's text as the
    whole answer, else the one "(X)" or the one option text it mentions; None if unclear."""
    m = _LEADING_LETTER.match(answer)
    if m and (letter := next(g for g in m.groups() if g)) in choices:
        return letter
    said = normalize(answer)
    texts = {letter: normalize(text) for letter, text in choices.items()}
    exact = [letter for letter, text in texts.items() if text == said]
    if len(exact) == 1:
        return exact[0]
    marked = {x for x in _PARENTHESIZED.findall(answer) if x in choices}
    if len(marked) == 1:
        return marked.pop()
    mentioned = [x for x, t in texts.items() if t and re.search(rf"\b{re.escape(t)}\b", said)]
    return mentioned[0] if len(mentioned) == 1 else None


def is_transcription(question: str) -> bool:
    # AF3's speech-recognition prompts ask to "transcribe" or for a "transcription".
    return "transcri" in question.lower()


@dataclass(frozen=True)
class Scores:
    scored: int  # predictions with a reference
    exact_match: float | None
    multiple_choice: int
    multiple_choice_accuracy: float | None
    transcription: int
    wer: float | None
    cer: float | None


def score(predictions: Iterable[dict]) -> Scores:
    """Predictions carry "question", "answer" and "reference"; those without a reference
    are not scored. WER and CER are corpus-level: all errors over all reference words."""
    exact = scored = mc_total = mc_correct = 0
    refs: list[str] = []
    hyps: list[str] = []
    for p in predictions:
        reference, answer, question = p.get("reference"), p["answer"], p["question"]
        if reference is None:
            continue
        scored += 1
        exact += normalize(answer) == normalize(reference)
        choices = parse_choices(question)
        expected = choice_of(reference, choices) if choices else None
        if expected is not None:
            mc_total += 1
            mc_correct += choice_of(answer, choices) == expected
        elif is_transcription(question):
            # AF3 wraps transcripts ('The spoken content of the audio is "..."').
            refs.append(normalize(clean(reference)))
            hyps.append(normalize(clean(answer)))
    return Scores(
        scored=scored,
        exact_match=exact / scored if scored else None,
        multiple_choice=mc_total,
        multiple_choice_accuracy=mc_correct / mc_total if mc_total else None,
        transcription=len(refs),
        wer=jiwer.wer(refs, hyps) if refs else None,
        cer=jiwer.cer(refs, hyps) if refs else None,
    )
