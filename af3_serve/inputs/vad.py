"""Where a recording has speech: Silero VAD (`silero-vad`, the detector faster-whisper and
WhisperX use), run with onnxruntime over a request's int16 PCM: its ONNX model ships in the
wheel, and onnxruntime gives the same probabilities as its TorchScript model (within 2e-4)
for 2.8x less CPU (measured, one thread each: benchmarks/results/README.md).

The model runs in worker processes of its own (`VoiceActivity`), not in the API process:
it costs about 1/450 of the audio's duration in CPU (a 3-h file, 25 s), against
the API process's 0.1 s for a whole 10-min chat request. The recording goes to them in
60-s blocks, each with the 1.6 s before it to settle the model's state (its frames there
are dropped), so blocks are independent: several workers share one long file, and no
worker holds more than a block. Only the per-frame probabilities (one float per 32 ms)
come back; the API process turns them into regions with silero's own rules. Each worker
runs one thread: the model is tiny, and more intra-op threads only slow it down."""

import asyncio
import contextlib
import importlib.util
import struct
import sys
import threading
import warnings
from asyncio.subprocess import PIPE
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from af3_model_executor.constants import SAMPLE_RATE

FRAME = 512  # Silero's frame at 16 kHz (32 ms)
_CONTEXT = 64  # samples of the frame before, which Silero's model takes with each frame
BLOCK_FRAMES = 60 * SAMPLE_RATE // FRAME  # a block: 60 s
WARMUP_FRAMES = 50  # 1.6 s before a block, run and dropped: the state settles in less
# Silero's defaults, but regions come unpadded: the window plan pads a window's edges and
# needs the pauses between regions as detected, to cut at the longest.
SILERO_RULES = {
    "threshold": 0.5,
    "min_speech_duration_ms": 250,
    "min_silence_duration_ms": 100,
    "speech_pad_ms": 0,
}

_local = threading.local()
_HEADER = struct.Struct("<II")  # samples (or probabilities) in the message, frames to skip


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Importing silero_vad sets torch's thread count (in this thread) and its TorchScript
    parts warn that TorchScript is deprecated: neither is wanted here."""
    import torch

    threads = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield
    torch.set_num_threads(threads)


def _model_path() -> Path:
    """The ONNX model in silero-vad's wheel, found without importing the package (which
    imports torch: the workers need only onnxruntime)."""
    spec = importlib.util.find_spec("silero_vad")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "data" / "silero_vad.onnx"


def _session() -> Any:
    if (session := getattr(_local, "session", None)) is None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = _local.session = onnxruntime.InferenceSession(
            str(_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
    return session


def block_probabilities(pcm: np.ndarray, skip: int) -> np.ndarray:
    """Silero's speech probability of each 512-sample frame of 16-kHz int16 PCM (the last
    frame zero-padded), from a fresh state, as silero's own `OnnxWrapper` computes them;
    the first `skip` frames are left out."""
    audio = pcm.astype(np.float32) * np.float32(1 / 32768)
    if audio.size % FRAME:
        audio = np.pad(audio, (0, FRAME - audio.size % FRAME))
    return SileroState().run(audio)[skip:]


class SileroState:
    """The model's state over a stream of frames: its recurrent state and the context (the
    last 64 samples) the next frame is read with. One per block, or per live stream."""

    def __init__(self) -> None:
        self.x = np.zeros((1, _CONTEXT + FRAME), np.float32)  # the frame after its context
        self.state = np.zeros((2, 1, 128), np.float32)

    def run(self, audio: np.ndarray) -> np.ndarray:
        """The probabilities of whole frames of 16-kHz float32 audio, continuing the state."""
        session = _session()
        rate = np.array(SAMPLE_RATE, np.int64)
        probs = np.empty(audio.size // FRAME, np.float32)
        for i in range(probs.size):
            self.x[0, :_CONTEXT] = self.x[0, -_CONTEXT:]
            self.x[0, _CONTEXT:] = audio[i * FRAME : (i + 1) * FRAME]
            out, self.state = session.run(None, {"input": self.x, "state": self.state, "sr": rate})
            probs[i] = out[0, 0]
        return probs


def blocks(n: int) -> list[tuple[int, int, int]]:
    """The recording's blocks: (first sample with warm-up, end sample, frames to skip)."""
    out = []
    for first in range(0, (n + FRAME - 1) // FRAME, BLOCK_FRAMES):
        skip = min(first, WARMUP_FRAMES)
        out.append(((first - skip) * FRAME, min((first + BLOCK_FRAMES) * FRAME, n), skip))
    return out


def regions_from_probabilities(probs: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Silero's rules (thresholds with hysteresis, shortest speech and silence): [start,
    end) sample spans of speech as detected, in order and apart."""
    with _quiet_torch():  # silero_vad imports torch: never in the workers
        from silero_vad import get_speech_timestamps_from_probs

    stamps = get_speech_timestamps_from_probs(
        probs.tolist(), sampling_rate=SAMPLE_RATE, audio_length_samples=n, **SILERO_RULES
    )
    return [(int(s["start"]), int(s["end"])) for s in stamps]


def speech_regions(pcm: np.ndarray) -> list[tuple[int, int]]:
    """The same regions as `VoiceActivity.regions`, computed in this thread (benchmarks,
    tests' references)."""
    if pcm.size == 0:
        return []
    probs = [block_probabilities(pcm[a:b], skip) for a, b, skip in blocks(pcm.size)]
    return regions_from_probabilities(np.concatenate(probs), pcm.size)


class VoiceActivity:
    """Worker processes that run the model: `python -m af3_serve.inputs.vad`, started on the
    first request, one block at a time each over its pipes (int16 in, float32 out); only
    numpy and onnxruntime are imported there."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        # Idle workers; None wakes a waiter when a worker failed, to start another.
        self._idle: asyncio.Queue[asyncio.subprocess.Process | None] = asyncio.Queue()
        self._started = 0
        self._all: list[asyncio.subprocess.Process] = []

    async def _worker(self) -> asyncio.subprocess.Process:
        while True:
            if self._idle.empty() and self._started < self.workers:
                return await self._start()
            if (worker := await self._idle.get()) is not None:
                return worker
            # A worker failed: its place is free; start another or wait again.

    async def _start(self) -> asyncio.subprocess.Process:
        self._started += 1
        try:
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", __name__, stdin=PIPE, stdout=PIPE
            )
        except BaseException:
            self._started -= 1
            raise
        self._all.append(worker)
        return worker

    async def _block(self, pcm: np.ndarray, skip: int) -> np.ndarray:
        worker = await self._worker()
        exchange = asyncio.ensure_future(_exchange(worker, pcm, skip))
        exchange.add_done_callback(lambda done: self._returned(worker, done))
        # Shielded: a block sent is read back in full (also for a request that is gone),
        # so the worker's pipes stay in step.
        return await asyncio.shield(exchange)

    def _returned(self, worker: asyncio.subprocess.Process, done: asyncio.Future) -> None:
        if done.cancelled() or done.exception() is not None:
            self._started -= 1  # a worker that failed is not used again
            if worker in self._all:
                self._all.remove(worker)
            if worker.returncode is None:
                worker.kill()
            self._idle.put_nowait(None)
        else:
            self._idle.put_nowait(worker)

    async def regions(
        self, pcm: np.ndarray, known: dict[tuple[int, int], np.ndarray] | None = None
    ) -> list[tuple[int, int]]:
        """The recording's speech regions, its blocks spread over the workers. `known`: the
        probabilities of whole blocks of a recording that grows (a realtime turn), by their
        span, reused and kept."""
        if pcm.size == 0:
            return []

        async def block(a: int, b: int, skip: int) -> np.ndarray:
            if known is not None and (a, b) in known:
                return known[(a, b)]
            probs = await self._block(pcm[a:b], skip)
            # A whole block well before the end: the samples a longer decode of the same
            # recording gives there are the same (only its last few may differ).
            if (
                known is not None
                and b - a == (BLOCK_FRAMES + skip) * FRAME
                and pcm.size - b >= SAMPLE_RATE
            ):
                known[(a, b)] = probs
            return probs

        try:
            probs = await asyncio.gather(*(block(a, b, skip) for a, b, skip in blocks(pcm.size)))
        except (OSError, asyncio.IncompleteReadError) as exc:  # a worker died
            from af3_serve.edge.errors import APIError  # not in the workers: they stay light

            raise APIError(
                503, "Voice activity detection failed; retry.", code="server_error"
            ) from exc
        return await asyncio.get_running_loop().run_in_executor(
            None, regions_from_probabilities, np.concatenate(probs), pcm.size
        )

    async def aclose(self) -> None:
        for worker in self._all:
            if worker.returncode is None:
                worker.kill()
            await worker.wait()
        self._all.clear()


async def _exchange(worker: asyncio.subprocess.Process, pcm: np.ndarray, skip: int) -> np.ndarray:
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write(_HEADER.pack(pcm.size, skip) + pcm.tobytes())  # int16, little-endian
    await worker.stdin.drain()
    (count, _) = _HEADER.unpack(await worker.stdout.readexactly(_HEADER.size))
    return np.frombuffer(await worker.stdout.readexactly(4 * count), "<f4")


def _serve() -> None:
    """A worker: blocks from stdin, probabilities to stdout, until stdin closes."""
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while header := source.read(_HEADER.size):
        n, skip = _HEADER.unpack(header)
        pcm = np.frombuffer(source.read(2 * n), "<i2")
        probs = block_probabilities(pcm, skip).astype("<f4")
        sink.write(_HEADER.pack(probs.size, 0) + probs.tobytes())
        sink.flush()


if __name__ == "__main__":
    _serve()
