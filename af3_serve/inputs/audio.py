"""Audio files -> 16 kHz mono float32, with limits enforced while decoding.

The header's duration is checked before decoding where the format has one, but a
header can lie, so frames are also counted block by block and decoding stops as soon
as the limit is passed: memory stays bounded whatever the file claims.
"""

import io
from dataclasses import dataclass
from typing import BinaryIO

import librosa
import numpy as np
import soundfile as sf
import soxr

from af3_model_executor.constants import SAMPLE_RATE
from af3_serve.edge.errors import APIError

MAX_SAMPLE_RATE = 384000
MAX_CHANNELS = 32
_BLOCK_SECONDS = 10


@dataclass(frozen=True)
class AudioLimits:
    max_seconds: float
    max_decoded_bytes: int


def decode_audio(data: bytes, limits: AudioLimits, param: str) -> np.ndarray:
    """Decode any format libsndfile reads (wav, flac, ogg/vorbis/opus, mp3, aiff, ...)."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            return _read_limited(f, limits, param)
    except APIError:
        raise
    except Exception as exc:
        raise _undecodable(param) from exc


def decode_pcm16(source: BinaryIO, limits: AudioLimits, param: str) -> np.ndarray:
    """A file (an upload spooled to disk, read where it lies) -> 16-kHz mono int16 PCM, the
    one buffer a transcription keeps: filled block by block (downmixed and resampled as it
    comes), so hours of audio never exist as float32 or as a second copy."""
    try:
        source.seek(0)
        with sf.SoundFile(source) as f:
            return _read_pcm16(f, limits, param)
    except APIError:
        raise
    except Exception as exc:
        raise _undecodable(param) from exc


def _undecodable(param: str) -> APIError:
    # libsndfile's messages can carry internals: keep them out.
    return APIError(
        400,
        "Could not decode the audio: not a supported audio file "
        "(wav, flac, ogg, mp3 and other formats libsndfile reads).",
        param=param,
        code="invalid_audio",
    )


def header_seconds(data: bytes | BinaryIO) -> float | None:
    """Duration from the file's header, without decoding; None if it gives none."""
    try:
        if isinstance(data, bytes):
            info = sf.info(io.BytesIO(data))
        else:
            data.seek(0)
            info = sf.info(data)
            data.seek(0)
    except Exception:
        return None
    if info.samplerate <= 0 or not 0 < info.frames < 2**62:
        return None
    return info.frames / info.samplerate


def _too_long(seconds: float, limits: AudioLimits, param: str) -> APIError:
    return APIError(
        413,
        f"Audio is {seconds:.1f} s long; this server accepts at most {limits.max_seconds:g} s.",
        param=param,
        code="audio_too_long",
    )


def _check_format(f: sf.SoundFile, param: str) -> None:
    rate, channels = f.samplerate, f.channels
    if not 0 < rate <= MAX_SAMPLE_RATE or not 0 < channels <= MAX_CHANNELS:
        raise APIError(
            400,
            f"Unsupported audio: {rate} Hz, {channels} channels (at most {MAX_SAMPLE_RATE} Hz "
            f"and {MAX_CHANNELS} channels).",
            param=param,
            code="invalid_audio",
        )


def _no_samples(param: str) -> APIError:
    return APIError(400, "The audio holds no samples.", param=param, code="invalid_audio")


def _not_finite(param: str) -> APIError:
    return APIError(
        400, "The audio holds NaN or infinite samples.", param=param, code="invalid_audio"
    )


def _read_limited(f: sf.SoundFile, limits: AudioLimits, param: str) -> np.ndarray:
    _check_format(f, param)
    rate, channels = f.samplerate, f.channels
    max_frames = int(limits.max_seconds * rate)
    known = f.frames < 2**62  # formats without a length say 2**63-1
    if known and f.frames > max_frames:
        raise _too_long(f.frames / rate, limits, param)
    if known and f.frames * channels * 4 <= limits.max_decoded_bytes:
        # One read into one array of the header's size (both checked above): libsndfile
        # stops at that count, and a header that overstates yields fewer frames.
        audio = _mono(_read_float32(f, f.frames))
    else:
        # Only the float32 mono downmix is kept, a block at a time.
        audio = _read_blocks(f, min(max_frames, limits.max_decoded_bytes // 4), limits, param)
    if audio.size == 0:
        raise _no_samples(param)
    if not np.isfinite(audio).all():
        raise _not_finite(param)
    if rate != SAMPLE_RATE:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _read_float32(f: sf.SoundFile, frames: int) -> np.ndarray:
    """libsndfile turns 16-bit PCM into float as x / 32768; numpy does the same (bit for
    bit) in half the time, and WAV uploads are mostly 16-bit PCM."""
    if f.subtype != "PCM_16":
        return f.read(frames, dtype="float32")
    samples = f.read(frames, dtype="int16").astype(np.float32)
    samples *= np.float32(1 / 32768)
    return samples


def _mono(frames: np.ndarray) -> np.ndarray:
    return frames if frames.ndim == 1 else frames.mean(axis=1)


def _read_blocks(f: sf.SoundFile, max_frames: int, limits: AudioLimits, param: str) -> np.ndarray:
    """A stream of unknown length: counted block by block, stopped past the limit."""
    rate, blocks, frames = f.samplerate, [], 0
    for block in f.blocks(blocksize=_BLOCK_SECONDS * rate, dtype="float32"):
        frames += len(block)
        if frames > max_frames:
            raise _too_long(frames / rate, limits, param)
        blocks.append(_mono(block))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def _too_large(limits: AudioLimits, param: str) -> APIError:
    message = f"The decoded audio is larger than {limits.max_decoded_bytes} bytes."
    return APIError(413, message, param=param, code="audio_too_long")


def _read_pcm16(f: sf.SoundFile, limits: AudioLimits, param: str) -> np.ndarray:
    _check_format(f, param)
    rate = f.samplerate
    max_frames = int(limits.max_seconds * rate)
    known = f.frames < 2**62
    if known and f.frames > max_frames:
        raise _too_long(f.frames / rate, limits, param)
    # The output's room: the header's length (or the limit) at 16 kHz, within the decoded
    # bytes allowed. np.empty maps pages lazily: room never written costs no memory.
    frames = f.frames if known else max_frames
    if known and int(frames * SAMPLE_RATE / rate) * 2 > limits.max_decoded_bytes:
        raise _too_large(limits, param)
    room = min(int(frames * SAMPLE_RATE / rate) + SAMPLE_RATE, limits.max_decoded_bytes // 2)
    out = np.empty(room, np.int16)
    if rate == SAMPLE_RATE and f.channels == 1 and f.subtype == "PCM_16":
        # Already what we keep: read straight into the buffer.
        filled = f.read(
            min(room, max_frames + 1), dtype="int16", out=out[: min(room, max_frames + 1)]
        ).size
        if filled > max_frames:
            raise _too_long(filled / rate, limits, param)
        if filled == 0:
            raise _no_samples(param)
        return out[:filled]
    resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1)
    filled = read = 0
    for block in f.blocks(blocksize=_BLOCK_SECONDS * rate, dtype="float32"):
        read += len(block)
        if read > max_frames:
            raise _too_long(read / rate, limits, param)
        filled = _append_pcm16(out, filled, _mono(block), resampler, param, limits)
    if resampler is not None:
        empty = np.zeros(0, np.float32)
        filled = _append_pcm16(
            out, filled, resampler.resample_chunk(empty, last=True), None, param, limits
        )
    if filled == 0:
        raise _no_samples(param)
    return out[:filled]


def _append_pcm16(
    out: np.ndarray,
    filled: int,
    block: np.ndarray,
    resampler: "soxr.ResampleStream | None",
    param: str,
    limits: AudioLimits,
) -> int:
    if not np.isfinite(block).all():
        raise _not_finite(param)
    if resampler is not None:
        block = resampler.resample_chunk(np.ascontiguousarray(block, np.float32))
    if filled + block.size > out.size:
        if out.size >= limits.max_decoded_bytes // 2:
            raise _too_large(limits, param)
        block = block[: out.size - filled]  # the resampler's last few samples past the room
    # x * 32768: 16-bit files come back bit for bit (libsndfile reads them as x / 32768).
    block = np.clip(block * np.float32(32768), -32768, 32767)
    out[filled : filled + block.size] = np.rint(block)
    return filled + block.size
