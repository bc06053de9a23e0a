"""Turning AF3's answers into transcripts: its wrapper phrasing removed (also while
streaming), and 30-s window segments rendered as JSON, SRT or WebVTT.

AF3 gives no word or sentence timings: a segment is one 30-s window of the audio,
transcribed as its own request. Times are the window's bounds, never invented.
"""

import zlib
from dataclasses import dataclass

# What AF3 says around a transcript, e.g. `The spoken content of the audio is "..."`.
WRAPPERS = (
    "The spoken content of the audio is",
    "The transcription of the audio is",
    "The content of the input audio is",
)
_QUOTES = "\"'"


class TranscriptCleaner:
    """Streams text through, holding back only what may still be wrapper phrasing: the
    start until it cannot begin a wrapper, and the last two characters (a closing quote
    and period) until the end."""

    def __init__(self) -> None:
        self._head = ""  # undecided start of the text
        self._started = False
        self._wrapped = False
        self._tail = ""

    def feed(self, delta: str) -> str:
        if not self._started:
            self._head += delta
            text = self._head.lstrip()
            prefix = next((w for w in WRAPPERS if text.startswith(w)), None)
            if prefix is not None:
                rest = text[len(prefix) :].lstrip()
                if not rest:
                    return ""  # the opening quote may still come
                self._wrapped = True
                text = rest[1:] if rest[0] in _QUOTES else rest
            elif any(w.startswith(text) for w in WRAPPERS):
                return ""
            self._started = True
            delta = text
        self._tail += delta
        out, self._tail = self._tail[:-2], self._tail[-2:]
        return out

    def finish(self) -> str:
        tail = self._tail if self._started else self._head.strip()
        if self._wrapped:
            tail = tail.rstrip().removesuffix(".").rstrip().rstrip(_QUOTES)
        return tail


def clean(text: str) -> str:
    cleaner = TranscriptCleaner()
    return (cleaner.feed(text) + cleaner.finish()).strip()


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float
    temperature: float

    def verbose(self) -> dict:
        raw = self.text.encode()
        ratio = len(raw) / len(zlib.compress(raw)) if raw else 0.0
        return {
            "id": self.id,
            "seek": int(self.start * 100),  # Whisper counts in 10-ms frames
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "tokens": self.tokens,
            "temperature": self.temperature,
            "avg_logprob": self.avg_logprob,
            "compression_ratio": round(ratio, 3),
        }


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(segments: list[Segment]) -> str:
    cues = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text or '...'}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(segments: list[Segment]) -> str:
    cues = [
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text or '...'}\n" for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)
