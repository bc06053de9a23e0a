"""The window plan of a transcription: speech regions (from `inputs/vad.py`, as detected,
unpadded) packed into windows of at most 30 s that begin and end in pauses.

- A window is one stretch of the recording, sent as it is: its first region's start to its
  last region's end, widened by up to `PAD_S` into the pauses around it (never past half
  a pause, so windows never overlap); each cut between windows lies in a pause.
- Regions are packed in order; when the next one does not fit, the window is cut at its
  last pause of 0.3 s or more in its second half (a sentence's end rather than a comma's;
  failing that, its longest pause there), and the regions after it open the next window.
- Pauses of at most `MAX_PAUSE_S` inside a window are kept (the model hears the speech's own
  rhythm); a longer pause ends the window and is never sent to the engine, nor is anything
  before the first region or after the last.
- Only speech that runs past a window without a pause is cut inside a region, at its
  quietest 20 ms in the window's second half (vLLM's `find_split_point`, as `vllm serve`
  cuts Whisper's audio), and never leaving a piece under a second.

A recording without speech has no window: it is answered without an engine request."""

from dataclasses import dataclass

import numpy as np
from vllm.multimodal.audio import find_split_point

from af3_model_executor.constants import SAMPLE_RATE, WINDOW_SECONDS
from af3_serve.inputs.vad import speech_regions

WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
MAX_PAUSE_S = 2.0
# A pause this long ends a sentence or a turn (a comma's is shorter): a full window is cut
# at the last such pause in its second half.
SENTENCE_PAUSE_S = 0.3
# Silero marks speech a little late at soft onsets (a fricative after a long silence): half
# a second of margin at a window's edges costs little, as only edges get it.
PAD_S = 0.5
_QUIET_FRAME = SAMPLE_RATE // 50  # 20 ms: finds the gap between two words
_MIN_PIECE = SAMPLE_RATE  # a cut leaves at least this much on each side

Span = tuple[int, int]


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
    regions: list[Span],
    max_samples: int = WINDOW_SAMPLES,
    max_pause: int = int(MAX_PAUSE_S * SAMPLE_RATE),
    pad: int = int(PAD_S * SAMPLE_RATE),
) -> list[Window]:
    """Windows over `regions` (in order, apart), each at most `max_samples` with its pads."""
    inner = max_samples - 2 * pad  # the regions' own span in a window
    pieces = [p for r in regions for p in cut_long_region(pcm, *r, max_samples=inner)]
    groups: list[list[Span]] = []
    current: list[Span] = []
    for piece in pieces:
        if current and piece[0] - current[-1][1] > max_pause:
            groups.append(current)
            current = []
        current.append(piece)
        while current[-1][1] - current[0][0] > inner:
            cut = _cut_pause(current, current[0][0] + inner // 2) + 1
            groups.append(current[:cut])
            current = current[cut:]
    if current:
        groups.append(current)
    return _padded(groups, pcm.size, pad)


def _cut_pause(spans: list[Span], after: int) -> int:
    """Where to cut `spans` (the window so far and the piece that does not fit): the index
    of the span before the last pause of at least `SENTENCE_PAUSE_S` among those after
    `after` (the window stays as full as it can), else before the longest of them, else
    before the last piece."""
    sentence = int(SENTENCE_PAUSE_S * SAMPLE_RATE)
    gaps = [
        (spans[i + 1][0] - spans[i][1], i) for i in range(len(spans) - 1) if spans[i][1] >= after
    ]
    if long := [i for gap, i in gaps if gap >= sentence]:
        return long[-1]
    return max(gaps)[1] if gaps else len(spans) - 2


def _padded(groups: list[list[Span]], n: int, pad: int) -> list[Window]:
    """Each group's span widened by `pad` into the silence around it, at most half of it."""
    windows = []
    for i, group in enumerate(groups):
        start, end = group[0][0], group[-1][1]
        before = groups[i - 1][-1][1] if i else -2 * pad
        after = groups[i + 1][0][0] if i + 1 < len(groups) else n + 2 * pad
        start = max(0, start - min(pad, (start - before) // 2))
        end = min(n, end + min(pad, (after - end) // 2))
        windows.append(Window(start, end))
    return windows


def speech_seconds(regions: list[tuple[int, int]]) -> float:
    return sum(b - a for a, b in regions) / SAMPLE_RATE


def speech_windows(pcm: np.ndarray) -> list[Window]:
    """The recording's window plan (CPU work: run it off the event loop)."""
    return plan_windows(pcm, speech_regions(pcm))
