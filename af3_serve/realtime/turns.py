"""Where a turn ends: the client commits (`turn_detection: null`), or the server hears it
(`server_vad`): Silero VAD (`inputs/vad.py`'s model, its state kept across the session's
appends) marks speech, and `silence_duration_ms` of silence after it ends the turn. The
session feeds the detector every appended piece, off the event loop, and acts on what it
reports: `speech_started`/`speech_stopped` events, a commit at the stop."""

from dataclasses import dataclass
from typing import Literal

import numpy as np
import soxr

from af3_model_executor.constants import SAMPLE_RATE
from af3_serve.edge.errors import APIError
from af3_serve.inputs.vad import FRAME, SileroState
from af3_serve.realtime.protocol import TurnDetection

FRAME_MS = 1000 * FRAME // SAMPLE_RATE  # 32
# Silero's own hysteresis: speech continues until the probability falls this far below the
# threshold, so a turn does not end on a soft syllable.
HYSTERESIS = 0.15


@dataclass(frozen=True)
class SpeechBoundary:
    kind: Literal["started", "stopped"]
    # On the session's audio timeline, as OpenAI's `audio_start_ms` (prefix padding
    # included) and `audio_end_ms` (the silence that ended the turn included).
    audio_ms: int


class ServerVad:
    """One session's voice detector: OpenAI's `server_vad` settings over Silero's frames."""

    def __init__(self, config: TurnDetection, origin_ms: float = 0.0) -> None:
        self.config = config
        self.origin_ms = origin_ms  # the session's audio before the detector was set
        self.silero = SileroState()
        self.rate = 0
        self.resampler: soxr.ResampleStream | None = None
        self.pending = np.empty(0, np.float32)  # 16-kHz audio short of a whole frame
        self.frames = 0  # frames heard in the session
        self.speaking = False
        self.silence_from: int | None = None  # the frame the current silence began at

    def feed(self, pcm16: bytes, rate: int) -> list[SpeechBoundary]:
        """The speech starts and stops in this piece (appended after the last). CPU work:
        run it off the event loop."""
        audio = np.frombuffer(pcm16, "<i2").astype(np.float32) * np.float32(1 / 32768)
        if rate != self.rate:  # the first piece, or a new format (the buffer was empty)
            self.rate = rate
            same = rate == SAMPLE_RATE
            self.resampler = None if same else soxr.ResampleStream(rate, SAMPLE_RATE, 1)
        if self.resampler is not None:
            audio = self.resampler.resample_chunk(audio)
        audio = np.concatenate([self.pending, audio])
        whole = audio.size - audio.size % FRAME
        self.pending = audio[whole:]
        boundaries = []
        for prob in self.silero.run(audio[:whole]):
            if boundary := self._frame(float(prob)):
                boundaries.append(boundary)
            self.frames += 1
        return boundaries

    def _frame(self, prob: float) -> SpeechBoundary | None:
        c = self.config
        threshold = c.threshold
        if not self.speaking:
            if prob < threshold:
                return None
            self.speaking, self.silence_from = True, None
            start = max(self.frames * FRAME_MS - c.prefix_padding_ms, 0)
            return SpeechBoundary("started", round(self.origin_ms) + start)
        if prob >= threshold:
            self.silence_from = None
        elif prob < threshold - HYSTERESIS and self.silence_from is None:
            self.silence_from = self.frames
        if self.silence_from is not None:
            if (self.frames + 1 - self.silence_from) * FRAME_MS >= c.silence_duration_ms:
                self.speaking, self.silence_from = False, None
                end = (self.frames + 1) * FRAME_MS
                return SpeechBoundary("stopped", round(self.origin_ms) + end)
        return None

    def reset(self) -> None:
        """The buffer was committed or cleared by the client: any turn heard so far ends
        (the model's state goes on with the audio)."""
        self.speaking, self.silence_from = False, None


def turn_detector(config: TurnDetection | None, origin_ms: float) -> ServerVad | None:
    """The detector a session's `turn_detection` asks for, hearing the audio appended after
    `origin_ms`; None: the client commits."""
    if config is None:
        return None
    if config.type == "server_vad":
        if config.idle_timeout_ms is not None:
            raise APIError(
                400,
                "turn_detection.idle_timeout_ms is not served; leave it null (the session's "
                "own idle limit still applies).",
                param="session.audio.input.turn_detection.idle_timeout_ms",
                code="unsupported_turn_detection",
            )
        return ServerVad(config, origin_ms)
    if config.type == "semantic_vad":
        raise APIError(
            400,
            "turn_detection 'semantic_vad' is not served: af3-serve has no end-of-turn "
            "model; use 'server_vad' (a voice detector with silence_duration_ms), or null "
            "and send input_audio_buffer.commit at the end of each turn.",
            param="session.audio.input.turn_detection.type",
            code="unsupported_turn_detection",
        )
    raise APIError(
        400,
        f"Unknown turn_detection type '{config.type}'.",
        param="session.audio.input.turn_detection.type",
        code="invalid_value",
    )
