"""Where a recording has speech: Silero VAD (`silero-vad`, its TorchScript model shipped in
the wheel), as faster-whisper and WhisperX use it, run over a request's int16 PCM.

It runs in the caller's thread (the decode workers, never the event loop), one model per
thread since the model keeps state between its 32-ms frames, and with one torch thread:
the model is tiny, and on a 2-core machine two intra-op threads made it 6x slower. With
torch's OpenMP backend the thread count is per thread, so this leaves the rest of the
process as it was."""

import threading
import warnings

import numpy as np
import torch

from af3_model_executor.constants import SAMPLE_RATE

_threads = torch.get_num_threads()
# Importing silero_vad sets torch's thread count in the importing thread: put it back. Its
# TorchScript model warns that TorchScript is deprecated, for each method, at import and load.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from silero_vad import get_speech_timestamps_from_probs, load_silero_vad
torch.set_num_threads(_threads)

FRAME = 512  # Silero's frame at 16 kHz (32 ms)
_BLOCK = FRAME * 1024  # frames converted to float at a time: bounded memory, any length
# Silero's defaults, but for the padding: 200 ms each side (silero splits a shorter pause
# between its two regions) keeps word onsets and tails in the region.
THRESHOLD = 0.5
MIN_SPEECH_MS = 250
MIN_SILENCE_MS = 100
SPEECH_PAD_MS = 200

_local = threading.local()


def _model() -> torch.jit.ScriptModule:
    if (model := getattr(_local, "model", None)) is None:
        torch.set_num_threads(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = _local.model = load_silero_vad()
    return model


def speech_probabilities(pcm: np.ndarray) -> np.ndarray:
    """Silero's speech probability of each 512-sample frame of 16-kHz int16 (or float)
    PCM; the last frame is zero-padded."""
    model = _model()
    model.reset_states()
    probs = np.empty((pcm.size + FRAME - 1) // FRAME, np.float32)
    scale = np.float32(1 / 32768) if pcm.dtype == np.int16 else np.float32(1)
    with torch.inference_mode():
        for start in range(0, pcm.size, _BLOCK):
            block = pcm[start : start + _BLOCK].astype(np.float32) * scale
            if block.size % FRAME:
                block = np.pad(block, (0, FRAME - block.size % FRAME))
            frames = torch.from_numpy(block).view(-1, FRAME)
            first = start // FRAME
            for i, frame in enumerate(frames):
                probs[first + i] = model(frame, SAMPLE_RATE).item()
    return probs


def speech_regions(pcm: np.ndarray) -> list[tuple[int, int]]:
    """The recording's speech as [start, end) sample spans, padded, in order and apart."""
    if pcm.size == 0:
        return []
    stamps = get_speech_timestamps_from_probs(
        speech_probabilities(pcm).tolist(),
        sampling_rate=SAMPLE_RATE,
        threshold=THRESHOLD,
        min_speech_duration_ms=MIN_SPEECH_MS,
        min_silence_duration_ms=MIN_SILENCE_MS,
        speech_pad_ms=SPEECH_PAD_MS,
        audio_length_samples=pcm.size,
    )
    return [(int(s["start"]), int(s["end"])) for s in stamps]
