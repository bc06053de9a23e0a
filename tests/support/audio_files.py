"""Test audio: clips of real speech of any length, encoded into files of each format in memory."""

import base64
import io

import numpy as np
import soundfile as sf

from af3_model_executor.constants import SAMPLE_RATE
from benchmarks import harness

FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def make_clip(speech: np.ndarray, seconds: float) -> np.ndarray:
    """A clip of real speech of any length: each 30-s stretch is the sample shifted and
    scaled differently, so windows differ and a mix-up of windows shows."""
    return harness.speech_clip(seconds, sample=speech)


def encode(audio: np.ndarray, fmt: str = "wav", rate: int = SAMPLE_RATE) -> bytes:
    container, subtype = FORMATS[fmt]
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=container, subtype=subtype)
    return buffer.getvalue()


def b64(audio: np.ndarray, fmt: str = "wav", rate: int = SAMPLE_RATE) -> str:
    return base64.b64encode(encode(audio, fmt, rate)).decode()


def audio_part(audio: np.ndarray, fmt: str = "wav", rate: int = SAMPLE_RATE) -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64(audio, fmt, rate), "format": fmt}}


def as_sent(audio: np.ndarray, fmt: str = "wav") -> np.ndarray:
    """The samples the server decodes from `audio_part(audio, fmt)`: 16-bit rounding
    moves greedy answers of the random-weight model, so references get these."""
    decoded, _ = sf.read(io.BytesIO(encode(audio, fmt)), dtype="float32")
    return decoded


def transcription_windows(audio: np.ndarray) -> list[np.ndarray]:
    """What af3-serve transcribes of `audio` sent as a WAV file: the upload decoded to 16-bit
    PCM as the server decodes it, cut by its window plan at the pauses; each window as the
    float32 samples the engine gets."""
    from af3_serve.inputs.audio import AudioLimits, decode_pcm16
    from af3_serve.speech.segmentation import speech_windows

    pcm = decode_pcm16(io.BytesIO(encode(audio)), AudioLimits(4 * 3600, 2**31), "file")
    return [w.audio(pcm) for w in speech_windows(pcm)]


def pcm16(audio: np.ndarray) -> bytes:
    """16-bit little-endian PCM, as a realtime client sends it."""
    return (np.clip(audio, -1, 1 - 2**-15) * 32768).astype("<i2").tobytes()


def as_pcm16(audio: np.ndarray) -> np.ndarray:
    """`audio` rounded to 16-bit values, so that a WAV of it and its `pcm16` hold the same
    samples (a realtime turn and the same audio uploaded decode alike)."""
    return np.frombuffer(pcm16(audio), "<i2").astype(np.float32) / 32768


# The speech sample's first seconds hold no speech: a clip that must be heard starts later.
SPEECH_STARTS_S = 8.0


def speaking(speech: np.ndarray, seconds: float) -> np.ndarray:
    """`seconds` of the speech sample from where it speaks (a turn with no speech would be
    transcribed without an engine request)."""
    skip = int(SPEECH_STARTS_S * SAMPLE_RATE)
    return make_clip(speech, seconds + SPEECH_STARTS_S)[skip : skip + int(seconds * SAMPLE_RATE)]


def at_24k(speech: np.ndarray, seconds: float) -> np.ndarray:
    """Speech at OpenAI's realtime rate, 24 kHz, in 16-bit values."""
    import soxr

    return as_pcm16(soxr.resample(speaking(speech, seconds), SAMPLE_RATE, 24000))


def turns_with_pauses(speech: np.ndarray, seconds: list[float]) -> np.ndarray:
    """A realtime stream at 24 kHz: a second of silence, then turns of speech of `seconds`
    each followed by 1.5 s of silence (a server-VAD turn ends after 0.5 s of it)."""
    pieces = [np.zeros(24000, np.float32)]
    for length in seconds:
        pieces += [at_24k(speech, length), np.zeros(36000, np.float32)]
    return np.concatenate(pieces)
