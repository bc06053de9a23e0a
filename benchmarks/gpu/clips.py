"""The clips the GPU comparison sends: real speech where the 30-s sample is in the checkout
(.cache/tests/pyannote-sample.wav; an offline bundle carries it), else deterministic noise
(random weights do not care what they hear)."""

import numpy as np

from benchmarks import harness


def have_speech() -> bool:
    return harness.SPEECH_WAV.exists()


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    if have_speech():
        return harness.speech_clip(seconds, seed)
    rng = np.random.default_rng(seed)
    n = int(round(seconds * harness.SAMPLE_RATE))
    return (0.1 * rng.standard_normal(n)).astype(np.float32)
