"""A conversation's audio as the engine gets it: cut at its 30-s windows, so that a turn's
finished windows can be encoded and prefilled while the turn is still spoken.

vLLM's prefix cache keys an audio's tokens by the audio's samples, all of them: a turn sent
whole shares no cached block with any prefix of itself. Cut at its window boundaries
(`AudioSpec.window_cuts`: for AF3, clips the model takes exactly as the whole, the same
prompt tokens and embeddings), its first windows are audios of their own. While the turn is
spoken, each window finished `OPEN_TAIL_S` before the audio's end (the decode's resampler
reads ahead: earlier samples are final, see transcript.py) is sent behind the conversation
so far for one token, so the encoder and the prefill of those windows are done by the
turn's end; the answer then waits for the last window and what follows it only.

The clips are 16-kHz float32 WAV files of the samples an upload of the turn decodes to
(the engine gets exactly the audio it would have got whole), base64-encoded once, as a chat
message carries them."""

import base64

import numpy as np

from af3_model_executor.audio_spec import AudioSpec
from af3_model_executor.constants import SAMPLE_RATE
from af3_serve.inputs.audio import AudioLimits, decode_audio
from af3_serve.realtime.audio import wav
from af3_serve.realtime.transcript import OPEN_TAIL_S


def clips(pcm: np.ndarray, spec: AudioSpec) -> list[str]:
    """16-kHz PCM as the clips a conversation sends (one where the model's audio cannot be
    cut), each a float32 WAV file in base64."""
    pieces = np.split(pcm, spec.window_cuts(pcm.size))
    return [
        base64.b64encode(wav(piece.tobytes(), SAMPLE_RATE, float32=True)).decode()
        for piece in pieces
    ]


def decoded_clips(
    audio: bytes, limits: AudioLimits, spec: AudioSpec, param: str, windows: int | None = None
) -> list[str]:
    """A WAV file (a committed turn, or its first `windows` windows) decoded as an upload
    is, as `clips`: CPU work, for the decode workers."""
    pcm = decode_audio(audio, limits, param)
    return clips(pcm if windows is None else pcm[: windows * spec.window_samples], spec)


def finished_windows(seconds: float, spec: AudioSpec) -> int:
    """Windows of a turn `seconds` long so far that are final and can be sent as clips of
    their own (none where the model's audio cannot be cut)."""
    final = max(0, int((seconds - OPEN_TAIL_S) * SAMPLE_RATE))
    return len(spec.window_cuts(final + spec.min_samples))
