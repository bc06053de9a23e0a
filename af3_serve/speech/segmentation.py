"""The window plan of a transcription: speech regions (from `vad.py`) packed into windows of
at most 30 s that begin and end in pauses.

- A window is one stretch of the recording, sent as it is: it starts where a region starts
  and ends where a region ends, so each cut between windows lies in a pause.
- Pauses of at most `MAX_PAUSE_S` inside a window are kept (the model hears the speech's own
  rhythm); a longer pause ends the window and is never sent to the engine, nor is anything
  before the first region or after the last.
- Only speech that runs past 30 s without a pause is cut inside a region, at its quietest
  20 ms in the window's second half (vLLM's `find_split_point`, as `vllm serve` cuts
  Whisper's audio), and never leaving a piece under a second.

A recording without speech has no window: it is answered without an engine request."""

from dataclasses import dataclass

import numpy as np
from vllm.multimodal.audio import find_split_point

from af3_model_executor.constants import SAMPLE_RATE, WINDOW_SECONDS
from af3_serve.inputs.vad import speech_regions

WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
MAX_PAUSE_S = 2.0
_QUIET_FRAME = SAMPLE_RATE // 50  # 20 ms: finds the gap between two words
_MIN_PIECE = SAMPLE_RATE  # a cut leaves at least this much on each side


@dataclass(frozen=True)
class Window:
    """[start, end) in samples of the recording."""

    start: int
    end: int

    @property
    def samples(self) -> int:
        return self.end - self.start

    def audio(self, pcm: np.ndarray) -> np.ndarray:
        """The window's float32 PCM for the engine (the request keeps one int16 buffer)."""
        piece = pcm[self.start : self.end]
        if pcm.dtype == np.int16:
            return piece.astype(np.float32) * np.float32(1 / 32768)
        return np.ascontiguousarray(piece, dtype=np.float32)


def cut_long_region(
    pcm: np.ndarray, start: int, end: int, max_samples: int = WINDOW_SAMPLES
) -> list[tuple[int, int]]:
    """A region cut into pieces of at most `max_samples`, each cut at the quietest 20 ms
    between half and all of a window past the piece's start."""
    pieces = []
    while end - start > max_samples:
        lo = start + max_samples // 2
        hi = min(start + max_samples, end - _MIN_PIECE)
        span = pcm[lo:hi].astype(np.float32)
        cut = lo + find_split_point(span, 0, span.size, _QUIET_FRAME)
        cut = min(max(cut, lo), hi)
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def plan_windows(
    pcm: np.ndarray,
    regions: list[tuple[int, int]],
    max_samples: int = WINDOW_SAMPLES,
    max_pause: int = int(MAX_PAUSE_S * SAMPLE_RATE),
) -> list[Window]:
    """Greedy packing, in order: a region joins the current window when the pause before it
    is at most `max_pause` and the window stays within `max_samples`."""
    windows: list[Window] = []
    for region in regions:
        for a, b in cut_long_region(pcm, *region, max_samples=max_samples):
            last = windows[-1] if windows else None
            if last is not None and a - last.end <= max_pause and b - last.start <= max_samples:
                windows[-1] = Window(last.start, b)
            else:
                windows.append(Window(a, b))
    return windows


def speech_seconds(regions: list[tuple[int, int]]) -> float:
    return sum(b - a for a, b in regions) / SAMPLE_RATE


def speech_windows(pcm: np.ndarray) -> list[Window]:
    """The recording's window plan (CPU work: run it off the event loop)."""
    return plan_windows(pcm, speech_regions(pcm))
