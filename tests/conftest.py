"""Session-wide fixtures: the tiny checkpoints, real speech, and one vLLM engine per session.
Each tier folder's conftest.py marks its tests and holds the tier's own fixtures (the fake
engine's in-process app in tests/http, the real af3-serve in tests/e2e)."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from af3_model_executor.constants import DEFAULT_MODEL, TINY_CHECKPOINT_MARKER
from benchmarks import harness
from tests.support.engine import offline_engine
from tests.support.paths import CACHE

# vLLM on CPU: a small KV cache is plenty for the tiny model.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# LLM.apply_model ships a function to the worker by pickle; tests only.
os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """The tiny AF3 with its thinking adapter in think/, as the HF port ships it."""
    from af3_model_executor.testing.tiny_checkpoint import build_checkpoint

    # Named as the hub's, so that it is served under the default name, audio-flamingo-3.
    path = CACHE / PurePosixPath(DEFAULT_MODEL).name
    if not (path / TINY_CHECKPOINT_MARKER).exists():
        build_checkpoint(path, "tiny", think=True)
    return path


@pytest.fixture(scope="session")
def tiny_music_flamingo() -> Path:
    """The tiny MusicFlamingo as music-flamingo-2601-hf (1200 s), its weights as
    transformers' save_pretrained writes them (`language_model.model.model.*`)."""
    return _tiny("music-flamingo-2601-hf", family="musicflamingo", layout="transformers")


@pytest.fixture(scope="session")
def tiny_af_next() -> Path:
    """The tiny MusicFlamingo as audio-flamingo-next-hf (1800 s), in the hub's layout."""
    return _tiny("audio-flamingo-next-hf", family="af-next")


def _tiny(name: str, **kwargs) -> Path:
    from af3_model_executor.testing.tiny_checkpoint import build_checkpoint

    path = CACHE / name
    if not (path / TINY_CHECKPOINT_MARKER).exists():
        build_checkpoint(path, "tiny", **kwargs)
    return path


@pytest.fixture(scope="session")
def speech_wav() -> Path:
    """30 s of real conversational speech (16 kHz) from the pyannote-audio wheel,
    downloaded (not installed) at test time; the benchmarks use the same file."""
    harness.speech_sample()
    return harness.SPEECH_WAV


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    return harness.speech_sample()


@pytest.fixture(scope="session")
def llm(tiny_checkpoint: Path) -> Iterator["object"]:
    """Our model in vLLM's offline engine, shared by every test of the session (in
    tests/engine and tests/e2e only: the fast tiers refuse it, tests/support/tiers.py)."""
    engine = offline_engine(tiny_checkpoint)
    yield engine
    del engine


@pytest.fixture(scope="session")
def espeak_wav() -> Path:
    """Known English text spoken by espeak-ng (a Debian package), resampled by us later."""
    wav = CACHE / "espeak.wav"
    if not wav.exists():
        wav.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["espeak-ng", "-w", str(wav), "The quick brown fox jumps over the lazy dog."],
            check=True,
        )
    return wav
