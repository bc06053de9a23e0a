"""Spoken recordings whose speech and pauses are known to the sample: sentences spoken one by
one by espeak-ng (a Debian package), trimmed to their sound and joined with chosen silences;
and what a window plan does to them (cuts inside speech, speech covered, silence sent).
Used by the transcription tests and `benchmarks.speech_windows`."""

import subprocess
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from af3_model_executor.constants import SAMPLE_RATE
from benchmarks.harness import ROOT, SPEECH_WAV, speech_clip, speech_sample

ESPEAK_CACHE = ROOT / ".cache" / "tests" / "espeak-sentences"
SENTENCES = [
    "Good morning everyone, and thank you for joining the weekly planning meeting.",
    "The first item on the agenda is the release schedule for the next quarter.",
    "We moved the deadline by two weeks because the testing took longer than expected.",
    "Please send your comments on the draft before Friday afternoon.",
    "The budget for travel is unchanged.",
    "Our team finished the migration of the old database last night.",
    "Customers reported that the new search page loads much faster now.",
    "There are still three open questions about the pricing model.",
    "I would like to hear from the design group first.",
    "The prototype will be ready for a demonstration at the end of the month.",
    "We need two more volunteers for the support rotation.",
    "Let us take a short break and continue in ten minutes.",
    "Welcome back, we will now look at the numbers from the last survey.",
    "Most people liked the changes, but some found the menu confusing.",
    "The next meeting is on Tuesday at nine o'clock.",
    "Thank you all, that is everything for today.",
]
# A sample counts as sound above this level (espeak-ng's silence is digital zero or close).
_SOUND_LEVEL = 1e-3


def spoken_sentence(index: int) -> np.ndarray:
    """Sentence `index` of SENTENCES spoken by espeak-ng at 16 kHz, trimmed to its sound."""
    path = ESPEAK_CACHE / f"{index:02d}.wav"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "s.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), SENTENCES[index]], check=True)
            audio, rate = sf.read(wav, dtype="float32")
            audio = librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
            sound = np.flatnonzero(np.abs(audio) > _SOUND_LEVEL)
            sf.write(path, audio[sound[0] : sound[-1] + 1] * 0.8, SAMPLE_RATE, subtype="PCM_16")
    audio, _ = sf.read(path, dtype="float32")
    return audio


@dataclass
class Recording:
    audio: np.ndarray  # 16-kHz float32
    speech: list[tuple[int, int]]  # each sentence's [start, end) in samples

    @property
    def seconds(self) -> float:
        return self.audio.size / SAMPLE_RATE


def spoken_recording(
    pauses: Iterable[float], lead_s: float = 1.0, tail_s: float = 1.0
) -> Recording:
    """Sentences (SENTENCES in turn, again and again) separated by `pauses` (seconds, one
    per gap: as many sentences as pauses + 1), after `lead_s` and before `tail_s` of
    silence."""
    pauses = list(pauses)
    parts = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)]
    speech, at = [], parts[0].size
    for i in range(len(pauses) + 1):
        sentence = spoken_sentence(i % len(SENTENCES))
        parts.append(sentence)
        speech.append((at, at + sentence.size))
        at += sentence.size
        gap = pauses[i] if i < len(pauses) else tail_s
        parts.append(np.zeros(int(gap * SAMPLE_RATE), np.float32))
        at += parts[-1].size
    return Recording(np.concatenate(parts), speech)


def meeting_pauses(seconds: float, seed: int = 0) -> list[float]:
    """Pauses for a recording of about `seconds` (with `spoken_recording`'s sentences):
    0.35-0.9 s between sentences and a 40-s silence every 3 minutes."""
    rng = np.random.default_rng(seed)
    lengths = [spoken_sentence(i).size / SAMPLE_RATE for i in range(len(SENTENCES))]
    pauses: list[float] = []
    t, next_break = lengths[0], 180.0
    while t < seconds:
        if t >= next_break:
            pauses.append(40.0)
            next_break += 180.0
        else:
            pauses.append(float(rng.uniform(0.35, 0.9)))
        t += pauses[-1] + lengths[len(pauses) % len(SENTENCES)]
    return pauses


def meeting(seconds: float, seed: int = 0) -> Recording:
    """About `seconds` of a meeting: sentences, short pauses, a long silence every 3 min."""
    return spoken_recording(meeting_pauses(seconds, seed))


def sample_turns() -> list[tuple[int, int]]:
    """The speech of `harness.speech_sample()` as its annotators marked it: the speaker
    turns of the RTTM beside it in the pyannote-audio wheel, overlaps merged, in samples."""
    speech_sample()  # downloads the wheel when needed
    (wheel,) = (SPEECH_WAV.parent / "wheels").glob("pyannote_audio-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        rttm = zf.read("pyannote/audio/sample/sample.rttm").decode()
    turns = sorted(
        (float(f[3]), float(f[3]) + float(f[4])) for f in map(str.split, rttm.splitlines()) if f
    )
    merged: list[tuple[float, float]] = []
    for a, b in turns:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return [(round(a * SAMPLE_RATE), round(b * SAMPLE_RATE)) for a, b in merged]


def real_speech(seconds: float, lead_s: float = 0.0) -> Recording:
    """The tests' real speech of any length (`harness.speech_clip`: the 30-s conversation
    again and again, each copy shifted), its annotated turns shifted with it; after
    `lead_s` of silence (so that the copies' joins are not on a 30-s grid)."""
    sample = speech_sample()
    n, size = int(seconds * SAMPLE_RATE), sample.size
    speech = []
    for i in range(int(np.ceil(n / size))):
        shift = (7919 * i) % size  # as speech_clip rolls copy i (seed 0)
        for a, b in sample_turns():
            for lo, hi in ((a + shift, b + shift), (a + shift - size, b + shift - size)):
                lo, hi = max(lo, 0), min(hi, size)
                if lo < hi and i * size + lo < n:
                    speech.append((i * size + lo, min(i * size + hi, n)))
    lead = int(lead_s * SAMPLE_RATE)
    audio = np.concatenate([np.zeros(lead, np.float32), speech_clip(seconds, sample=sample)])
    return Recording(audio, sorted((a + lead, b + lead) for a, b in speech))


@dataclass
class PlanScore:
    windows: int
    cuts: int
    cuts_in_speech: int  # cuts that split a sentence
    speech_covered: float  # share of the sentences' samples inside a window
    speech_share: float  # share of the windows' samples that are sentences
    engine_seconds: float  # audio sent to the engine
    longest_pause_sent_s: float  # the longest stretch without a sentence inside a window


def score_plan(windows: list[tuple[int, int]], speech: list[tuple[int, int]], n: int) -> PlanScore:
    """How a window plan treats a recording of `n` samples whose sentences are `speech`."""
    is_speech = np.zeros(n, bool)
    for a, b in speech:
        is_speech[a:b] = True
    sent = np.zeros(n, bool)
    for a, b in windows:
        sent[a:b] = True
    cuts = 0
    in_speech = 0
    for (_, end), (start, _) in zip(windows, windows[1:], strict=False):
        cuts += 1
        # A cut splits a sentence when a sentence runs across either side of it.
        if any(a < end < b or a < start < b for a, b in speech):
            in_speech += 1
    longest = 0
    for a, b in windows:
        edges = np.diff(np.concatenate([[0], (~is_speech[a:b]).astype(np.int8), [0]]))
        runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
        longest = max(longest, int(runs.max(initial=0)))
    sent_samples = int(sent.sum())
    return PlanScore(
        windows=len(windows),
        cuts=cuts,
        cuts_in_speech=in_speech,
        speech_covered=float((sent & is_speech).sum() / max(is_speech.sum(), 1)),
        speech_share=float((sent & is_speech).sum() / max(sent_samples, 1)),
        engine_seconds=sent_samples / SAMPLE_RATE,
        longest_pause_sent_s=longest / SAMPLE_RATE,
    )
