"""What a benchmark sends: clip lengths, the audio (real files or generated), and the
request bodies. All the CPU-heavy work (synthesis, decoding, encoding, base64) runs here,
before any timed pass starts."""

import base64
import io
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from af3_model_executor.constants import SAMPLE_RATE

FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}
KINDS = ("speech", "tone", "noise")
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".aif", ".aiff", ".au"}
SPEECH_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "A journey of a thousand miles begins with a single step. "
    "Please call Stella and ask her to bring these things with her from the store: "
    "six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack "
    "for her brother Bob. We also need a small plastic snake and a big toy frog for the kids. "
    "The weather report says it will rain on Tuesday, so bring an umbrella to the meeting."
)
_PLACEHOLDER = "@@AUDIO@@"
# Multi-turn conversations (--turns): turn 1 asks --prompt, turns 2, 3, ... ask these in
# order, cycling. Short, so that each turn's new text is small next to the cached history.
FOLLOW_UPS = (
    "What is the main source of sound?",
    "Summarize it in one sentence.",
    "What is the mood of the audio?",
    "What happens at the end?",
    "Is there any background noise?",
)
# An inaudible per-request signature, so that no two requests carry the same audio: vLLM
# keys its multimodal, encoder and prefix caches on the decoded samples, and a repeated
# clip would be served from cache and flatter every number.
_SIGNATURE_SAMPLES = 6  # 12 bytes = 16 base64 characters
SEED_SIGNATURE_SHIFT = 24  # 36-bit signatures: 2**24 requests per seed, 4096 seeds
_DITHER = 1e-3  # compressed formats: noise at -60 dBFS, which a lossy encoder cannot drop


def draw_lengths(
    count: int, seconds: float | None, mix: tuple[float, float] | None, seed: int
) -> list[float]:
    """Clip lengths in seconds: fixed, or uniform over the mix rounded to whole seconds so
    that equal lengths share one encoded clip."""
    if mix is None:
        return [float(seconds)] * count
    rng = np.random.default_rng(seed)
    drawn = np.clip(np.round(rng.uniform(mix[0], mix[1], count)), mix[0], mix[1])
    return [float(s) for s in drawn]


def _to_mono_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    import librosa  # slow to import; only real files and speech need it

    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    if rate != SAMPLE_RATE:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=SAMPLE_RATE)
    return mono.astype(np.float32)


def _espeak(text: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        try:
            subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
        except FileNotFoundError as exc:
            raise ValueError(
                "speech needs the espeak-ng command; install it, or use --audio-kind tone|noise "
                "or --audio-dir"
            ) from exc
        audio, rate = sf.read(wav, dtype="float32")
    speech = _to_mono_16k(audio, rate)
    return 0.5 * speech / max(float(np.abs(speech).max()), 1e-9)


def _tones(n: int, rng: np.random.Generator) -> np.ndarray:
    """A melody of pentatonic notes with harmonics and plucked envelopes: pitched, rhythmic
    audio unlike speech, cheap to make at any length."""
    out = np.zeros(n, np.float32)
    pos = 0
    while pos < n:
        length = int(rng.choice([0.125, 0.25, 0.5]) * SAMPLE_RATE)
        t = np.arange(min(length, n - pos)) / SAMPLE_RATE
        freq = 220.0 * 2 ** (rng.choice([0, 2, 4, 7, 9]) / 12 + rng.integers(0, 3))
        note = sum(np.sin(2 * np.pi * k * freq * t) / k for k in (1, 2, 3))
        out[pos : pos + t.size] = note * np.exp(-4.0 * t)
        pos += length
    return 0.3 * out / max(float(np.abs(out).max()), 1e-9)


class AudioSource:
    """Audio of any length: cut or tiled from real files (one variant per file) or
    generated (one variant). The same (seconds, variant) always gives the same samples."""

    def __init__(self, kind: str, audio_dir: Path | None, seed: int) -> None:
        self.kind = "files" if audio_dir is not None else kind
        self.seed = seed
        self._files: list[np.ndarray] = []
        if audio_dir is not None:
            paths = sorted(p for p in audio_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
            if not paths:
                raise ValueError(
                    f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in {audio_dir}"
                )
            for path in paths:
                audio, rate = sf.read(path, dtype="float32")
                self._files.append(_to_mono_16k(audio, rate))
        elif kind == "speech":
            self._files.append(_espeak(SPEECH_TEXT))

    @property
    def variants(self) -> int:
        return len(self._files) if self.kind == "files" else 1

    def audio(self, seconds: float, variant: int) -> np.ndarray:
        n = round(seconds * SAMPLE_RATE)
        if self._files:
            return np.resize(self._files[variant], n)  # np.resize repeats to fill
        rng = np.random.default_rng([self.seed, n])
        if self.kind == "tone":
            return _tones(n, rng)
        return (0.1 * rng.standard_normal(n)).astype(np.float32)


def encode(audio: np.ndarray, fmt: str) -> bytes:
    container, subtype = FORMATS[fmt]
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format=container, subtype=subtype)
    return buffer.getvalue()


def _wav_signature_slot(wav: bytes) -> int:
    """Where, in the base64 text of a WAV file, 16 characters stand for exactly 12 bytes of
    samples: a byte offset inside the data chunk that is both 3-aligned (base64 groups) and
    sample-aligned."""
    data = wav.index(b"data", 12) + 8
    offset = next(p for p in range(data, data + 6) if p % 3 == 0 and (p - data) % 2 == 0)
    return offset // 3 * 4


def _signature(number: int) -> np.ndarray:
    """Six base-64 digits of `number` as int16 samples in [-32, 31]: at most -60 dBFS."""
    digits = [(number >> (6 * i)) & 63 for i in range(_SIGNATURE_SAMPLES)]
    return (np.array(digits) - 32).astype("<i2")


def questions(first: str, turns: int) -> tuple[str, ...]:
    """One question per turn: `first`, then the follow-ups in order, cycling."""
    return (first, *(FOLLOW_UPS[i % len(FOLLOW_UPS)] for i in range(turns - 1)))


CHAT_PATH = "/v1/chat/completions"
TRANSCRIPTION_PATH = "/v1/audio/transcriptions"
_BOUNDARY = "af3-bench-7d1f0c2b9e4a"


@dataclass(frozen=True)
class Request:
    index: int  # the conversation's: all turns about one audio share it
    audio_seconds: float
    body: tuple[bytes | memoryview, ...]  # joined when sent; the clip's base64 is shared
    turn: int = 1
    path: str = CHAT_PATH
    content_type: str = "application/json"

    @property
    def transcription(self) -> bool:
        return self.path == TRANSCRIPTION_PATH


def transcription_request(
    index: int, audio_seconds: float, fields: dict[str, Any], audio: bytes, fmt: str
) -> Request:
    """A multipart form for /v1/audio/transcriptions: `fields`, then the file."""
    parts = [
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    head = "".join(parts) + (
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="audio.{fmt}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    tail = f"\r\n--{_BOUNDARY}--\r\n"
    content_type = f"multipart/form-data; boundary={_BOUNDARY}"
    return Request(
        index, audio_seconds, (head.encode(), audio, tail.encode()), 1, TRANSCRIPTION_PATH,
        content_type,
    )  # fmt: skip


@dataclass(frozen=True)
class Conversation:
    """Questions about one signed audio, one per turn. Like an OpenAI client, each turn
    resends the whole history: the audio with the first question, then every earlier answer
    and the next question, so a server can serve all but the new text from its caches."""

    index: int
    audio_seconds: float
    fields: dict[str, Any]  # request fields other than the messages
    audio: tuple[bytes | memoryview, ...]  # base64 parts, joined when sent
    fmt: str
    questions: tuple[str, ...]
    # The file to /v1/audio/transcriptions (raw bytes in `audio`; one turn) instead of chat.
    transcribe: bool = False

    def request(self, answers: list[str]) -> Request:
        """The request of turn len(answers) + 1, after the server's `answers` so far."""
        if self.transcribe:
            audio = b"".join(self.audio)
            return transcription_request(
                self.index, self.audio_seconds, self.fields, audio, self.fmt
            )
        audio_part = {
            "type": "input_audio",
            "input_audio": {"data": _PLACEHOLDER, "format": self.fmt},
        }
        first = [audio_part, {"type": "text", "text": self.questions[0]}]
        messages: list[dict[str, Any]] = [{"role": "user", "content": first}]
        for answer, question in zip(answers, self.questions[1 : len(answers) + 1], strict=True):
            messages.append({"role": "assistant", "content": answer})
            messages.append({"role": "user", "content": question})
        text = json.dumps(self.fields | {"messages": messages})
        # The audio comes before any answer, and an answer may, however unlikely, hold
        # the placeholder text too: split at the first.
        head, tail = (part.encode() for part in text.split(_PLACEHOLDER, 1))
        return Request(self.index, self.audio_seconds, (head, *self.audio, tail), len(answers) + 1)


class Workload:
    """N requests of known audio lengths. Clips are encoded once per (length, variant);
    unless `repeat_audio`, each request is signed with a run-wide unique number."""

    def __init__(
        self,
        source: AudioSource,
        lengths: list[float],
        fmt: str,
        prompt: str,
        repeat_audio: bool,
        transcribe: bool = False,
    ) -> None:
        """`transcribe`: each request is the file itself, to /v1/audio/transcriptions,
        signed with faint noise of its own (a voice-activity detector hears it as silence;
        every window the server cuts still differs from any other request's)."""
        self.transcribe = transcribe
        self.source = source
        self.lengths = lengths
        self.fmt = fmt
        self.prompt = prompt
        self.repeat_audio = repeat_audio
        self._keys = [(s, i % source.variants) for i, s in enumerate(lengths)]
        # Runs with different --seed sign with different numbers, so a server that served
        # one run holds none of the next run's audio in its caches.
        self._next_signature = source.seed << SEED_SIGNATURE_SHIFT
        # WAV (or repeated audio): each distinct clip is encoded here once and signed per
        # request by swapping 16 base64 characters; mp3/flac are re-encoded in requests().
        self._clips: dict[tuple[float, int], bytes] = {}
        self._slots: dict[tuple[float, int], int] = {}
        if (fmt == "wav" or repeat_audio) and not transcribe:
            for key in tqdm(sorted(set(self._keys)), desc="encoding clips", unit="clip"):
                data = encode(source.audio(*key), fmt)
                self._clips[key] = base64.b64encode(data)
                if fmt == "wav":
                    self._slots[key] = _wav_signature_slot(data)

    @property
    def distinct_clips(self) -> int:
        return len(set(self._keys))

    def requests(self, fields: dict[str, Any], count: int | None = None) -> list[Request]:
        """Single-turn requests over the first `count` (default all) lengths."""
        return [c.request([]) for c in self.conversations(fields, 1, count)]

    def conversations(
        self, fields: dict[str, Any], turns: int, count: int | None = None
    ) -> list[Conversation]:
        """Conversations of `turns` turns for one pass over the first `count` (default all)
        lengths, each about audio signed with a number no earlier pass used."""
        keys = self._keys[:count]
        first = self._next_signature
        self._next_signature += len(keys)
        audio: list[tuple[bytes | memoryview, ...]]
        if self.transcribe:
            progress = tqdm(keys, desc=f"encoding {self.fmt}", unit="file")
            numbers = [first if self.repeat_audio else first + i for i in range(len(keys))]
            audio = [(self._noisy(key, n),) for key, n in zip(progress, numbers, strict=True)]
            return [
                Conversation(i, key[0], fields, parts, self.fmt, ("",), transcribe=True)
                for i, (key, parts) in enumerate(zip(keys, audio, strict=True))
            ]
        if self.repeat_audio:
            audio = [(self._clips[key],) for key in keys]
        elif self.fmt == "wav":
            audio = [self._signed_wav(key, first + i) for i, key in enumerate(keys)]
        else:
            progress = tqdm(keys, desc=f"encoding {self.fmt}", unit="clip")
            audio = [(self._signed_compressed(key, first + i),) for i, key in enumerate(progress)]
        asked = questions(self.prompt, turns)
        return [
            Conversation(i, key[0], fields, parts, self.fmt, asked)
            for i, (key, parts) in enumerate(zip(keys, audio, strict=True))
        ]

    def _signed_wav(self, key: tuple[float, int], number: int) -> tuple[memoryview | bytes, ...]:
        """The clip's base64 as three parts, the middle one the signature: no copy made."""
        b64, slot = memoryview(self._clips[key]), self._slots[key]
        signature = base64.b64encode(_signature(number).tobytes())
        return (b64[:slot], signature, b64[slot + len(signature) :])

    def _signed_compressed(self, key: tuple[float, int], number: int) -> bytes:
        return base64.b64encode(self._noisy(key, number))

    def _noisy(self, key: tuple[float, int], number: int) -> bytes:
        audio = self.source.audio(*key)
        noise = np.random.default_rng(number).standard_normal(audio.size).astype(np.float32)
        return encode(audio + _DITHER * noise, self.fmt)
