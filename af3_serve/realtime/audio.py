"""A realtime session's input audio: base64 frames in the session's format, held as 16-bit
PCM until a commit, then wrapped as a WAV file so the turn is decoded exactly as an uploaded
file is (libsndfile's float32 of the PCM, soxr to 16 kHz): a committed turn's samples equal
those of the same audio sent to /v1/audio/transcriptions."""

import struct
from dataclasses import dataclass

import numpy as np

from af3_serve.edge.errors import APIError
from af3_serve.realtime.protocol import AudioFormat

# OpenAI's 100 ms: a shorter commit is refused as empty.
MIN_COMMIT_SECONDS = 0.1


def _g711_tables() -> tuple[np.ndarray, np.ndarray]:
    """ITU-T G.711 mu-law and A-law bytes -> 16-bit PCM."""
    codes = np.arange(256, dtype=np.int32)
    u = ~codes & 0xFF
    exponent, mantissa = (u >> 4) & 7, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    ulaw = np.where(u & 0x80, -magnitude, magnitude)
    a = codes ^ 0x55
    exponent, mantissa = (a >> 4) & 7, a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1)
    )
    alaw = np.where(a & 0x80, magnitude, -magnitude)
    return ulaw.astype(np.int16), alaw.astype(np.int16)


_ULAW, _ALAW = _g711_tables()


@dataclass(frozen=True)
class InputFormat:
    """How the client's bytes are read: 16-bit little-endian PCM at `rate`, or G.711 at
    8 kHz, one byte a sample."""

    type: str = "audio/pcm"
    rate: int = 24000

    @classmethod
    def of(cls, fmt: AudioFormat) -> "InputFormat":
        if fmt.type == "audio/pcm":
            return cls("audio/pcm", fmt.rate or 24000)
        return cls(fmt.type, 8000)

    @property
    def bytes_per_second(self) -> int:
        return self.rate * (2 if self.type == "audio/pcm" else 1)

    def pcm16(self, data: bytes) -> bytes:
        if self.type == "audio/pcmu":
            return _ULAW[np.frombuffer(data, np.uint8)].tobytes()
        if self.type == "audio/pcma":
            return _ALAW[np.frombuffer(data, np.uint8)].tobytes()
        return data

    def describe(self) -> dict[str, object]:
        if self.type == "audio/pcm":
            return {"type": self.type, "rate": self.rate}
        return {"type": self.type}


WAV_HEADER_BYTES = 44  # `wav`'s header: its PCM follows


def wav(samples: bytes, rate: int, float32: bool = False) -> bytes:
    """A mono WAV file around `samples`: 16-bit PCM, or 32-bit float (`float32`)."""
    code, width = (3, 4) if float32 else (1, 2)  # WAVE_FORMAT_IEEE_FLOAT, WAVE_FORMAT_PCM
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(samples),
        b"WAVE",
        b"fmt ",
        16,
        code,
        1,  # mono
        rate,
        rate * width,
        width,
        8 * width,
        b"data",
        len(samples),
    )
    return header + samples


class AudioBuffer:
    """The uncommitted audio, in the session's format, bounded by `max_seconds`. Positions
    are milliseconds of the session's audio timeline (all audio ever appended), as OpenAI's
    `audio_start_ms`/`audio_end_ms`: the buffer holds [`start_ms`, `end_ms`)."""

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        self.format = InputFormat()
        self._data = bytearray()
        self.start_ms = 0.0

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def seconds(self) -> float:
        return self.size / self.format.bytes_per_second

    @property
    def end_ms(self) -> float:
        return self.start_ms + 1000 * self.seconds

    def append(self, data: bytes) -> None:
        """Takes `data` whole, or refuses it whole when the buffer would pass its bound."""
        if self.format.type == "audio/pcm" and len(data) % 2:
            raise APIError(
                400,
                "16-bit PCM audio must be a whole number of samples (an even byte count).",
                param="audio",
                code="invalid_audio",
            )
        if (self.size + len(data)) / self.format.bytes_per_second > self.max_seconds:
            raise APIError(
                400,
                f"The input audio buffer holds at most {self.max_seconds:g} s; commit or "
                "clear it before appending more.",
                param="audio",
                code="input_audio_buffer_full",
            )
        self._data += data

    def _offset(self, ms: float) -> int:
        """The byte offset of timeline position `ms`, on a sample, within the buffer."""
        width = 2 if self.format.type == "audio/pcm" else 1
        samples = int((ms - self.start_ms) * self.format.rate / 1000)
        return min(max(samples * width, 0), self.size)

    def drop_before(self, ms: float) -> None:
        """Forgets the audio before `ms` (before a turn's start, or its prefix padding)."""
        self._drop(self._offset(ms))

    def _drop(self, cut: int) -> None:
        del self._data[:cut]
        self.start_ms += 1000 * cut / self.format.bytes_per_second

    def peek(self) -> bytes:
        """The buffered audio as a WAV file, left in the buffer."""
        return wav(self.format.pcm16(bytes(self._data)), self.format.rate)

    def take(self, until_ms: float | None = None) -> bytes:
        """The audio before `until_ms` (all of it by default) as a WAV file, taken out of
        the buffer; what follows stays."""
        cut = self.size if until_ms is None else self._offset(until_ms)
        data = self.format.pcm16(bytes(self._data[:cut]))
        self._drop(cut)
        return wav(data, self.format.rate)

    def clear(self) -> None:
        self._drop(self.size)
