"""Shared fixtures: the tiny checkpoint, real speech, and one vLLM engine per session."""

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import pytest_asyncio

from af3_model_executor.constants import DEFAULT_MODEL, TINY_CHECKPOINT_MARKER
from benchmarks import harness

# vLLM on CPU: a small KV cache is plenty for the tiny model.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# LLM.apply_model ships a function to the worker by pickle; tests only.
os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "tests"


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


def make_clip(speech: np.ndarray, seconds: float) -> np.ndarray:
    """A clip of real speech of any length: each 30-s stretch is the sample shifted and
    scaled differently, so windows differ and a mix-up of windows shows."""
    return harness.speech_clip(seconds, sample=speech)


@pytest.fixture(scope="session")
def llm(tiny_checkpoint: Path) -> Iterator["object"]:
    """Our model in vLLM's offline engine, shared by every test of the session."""
    engine = offline_engine(tiny_checkpoint)
    yield engine
    del engine


def offline_engine(checkpoint: Path) -> "object":
    """Our model (never vLLM's built-in) in vLLM's offline engine with the server's sizes for
    the checkpoint's longest audio, greedy-exact in float32, a whole prompt prefilled in one
    step."""
    from vllm import LLM

    from af3_serve.engine import offline_engine_kwargs

    kwargs = offline_engine_kwargs(checkpoint, dtype="float32")
    return LLM(**kwargs | {"max_num_batched_tokens": kwargs["max_model_len"]})


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


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the test server may read file:// audio from."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def server(tiny_checkpoint: Path, media_dir: Path, tmp_path_factory) -> Iterator["object"]:
    """One real af3-serve process for the session: API key on, two requests at a time."""
    from tests.server import PRIVATE_MEDIA_HOSTS, start_server

    log = tmp_path_factory.mktemp("server") / "af3-serve.log"
    process = start_server(
        tiny_checkpoint,
        log,
        "--allowed-local-media-path",
        str(media_dir),
        "--max-request-bytes",
        str(48 * 2**20),
        "--max-pending-requests",
        "2",
        "--allowed-media-domains",
        *PRIVATE_MEDIA_HOSTS,
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def client(server) -> "object":
    """The official `openai` client on the session server."""
    import openai

    from tests.server import API_KEY

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture
def aclient(server) -> "object":
    """Per test: its connection pool belongs to the test's event loop."""
    import openai

    from tests.server import API_KEY

    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


# Fixtures that boot a real vLLM engine; tests that use them are marked `engine`. Tests that
# start an engine themselves carry @pytest.mark.engine.
ENGINE_FIXTURES = {"server", "client", "aclient", "llm", "strict_server", "own_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)


# In the test's own event loop, so that the app's background tasks (the engine watcher)
# run while the test awaits.
@pytest_asyncio.fixture(loop_scope="function")
async def http(tiny_checkpoint: Path, tmp_path_factory) -> AsyncIterator["object"]:
    """af3-serve in this process on the fake engine (tests/in_process.py), default flags."""
    from tests.in_process import in_process_server

    async with in_process_server(tiny_checkpoint, tmp_path_factory.mktemp("af3-cache")) as app:
        yield app
