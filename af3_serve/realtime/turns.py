"""Where a turn ends. Today the client commits (`turn_detection: null`); a voice detector
(server VAD) plugs in as a `TurnDetector`: the session feeds it every appended piece of
16-bit PCM and acts on what it reports (`speech_started`/`speech_stopped` events, a commit
at the stop)."""

from dataclasses import dataclass
from typing import Literal, Protocol

from af3_serve.edge.errors import APIError
from af3_serve.realtime.protocol import TurnDetection


@dataclass(frozen=True)
class SpeechBoundary:
    kind: Literal["started", "stopped"]
    audio_ms: int  # from the start of the buffered audio, as OpenAI's `audio_start_ms`


class TurnDetector(Protocol):
    def feed(self, pcm16: bytes, rate: int) -> list[SpeechBoundary]:
        """The speech starts and stops found in this piece (appended after the last)."""
        ...

    def reset(self) -> None:
        """The buffer was committed or cleared: start afresh."""
        ...


def turn_detector(config: TurnDetection | None) -> TurnDetector | None:
    """The detector a session's `turn_detection` asks for; None: the client commits."""
    if config is None:
        return None
    if config.type in ("server_vad", "semantic_vad"):
        raise APIError(
            400,
            f"turn_detection '{config.type}' is not served yet: af3-serve has no voice "
            "detector; set turn_detection to null and send input_audio_buffer.commit at the "
            "end of each turn.",
            param="session.audio.input.turn_detection",
            code="unsupported_turn_detection",
        )
    raise APIError(
        400,
        f"Unknown turn_detection type '{config.type}'.",
        param="session.audio.input.turn_detection.type",
        code="invalid_value",
    )
