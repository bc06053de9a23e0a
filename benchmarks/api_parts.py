"""What the API process spends on one 10-minute request's body, part by part: the way
af3-serve does each step now against the way it did before (what `vllm serve` and the
standard library do). One thread, median of several runs, same input for both.

    python -m benchmarks.api_parts --out benchmarks/results/api_parts.json
"""

import argparse
import base64
import io
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pybase64
import soundfile as sf

from af3_serve.protocol import ChatCompletionRequest

SECONDS = 600
REPEATS = 7


def median_s(fn: Callable[[], object]) -> float:
    fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(sorted(times)[REPEATS // 2], 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    audio = (np.random.default_rng(0).standard_normal(SECONDS * 16000) * 0.1).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, audio, 16000, format="WAV", subtype="PCM_16")
    wav = buffer.getvalue()
    data = base64.b64encode(wav).decode()
    part = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": [part]}]}).encode()

    def pcm16_by_numpy() -> np.ndarray:
        samples = sf.read(io.BytesIO(wav), dtype="int16")[0].astype(np.float32)
        samples *= np.float32(1 / 32768)
        return samples

    assert np.array_equal(pcm16_by_numpy(), sf.read(io.BytesIO(wav), dtype="float32")[0])
    rows = {
        "base64_stdlib_validate": median_s(lambda: base64.b64decode(data, validate=True)),
        "base64_pybase64_validate": median_s(lambda: pybase64.b64decode(data, validate=True)),
        "json_loads_then_validate": median_s(
            lambda: ChatCompletionRequest.model_validate(json.loads(body))
        ),
        "pydantic_validate_json": median_s(lambda: ChatCompletionRequest.model_validate_json(body)),
        "wav_libsndfile_float32": median_s(lambda: sf.read(io.BytesIO(wav), dtype="float32")),
        "wav_int16_then_numpy": median_s(pcm16_by_numpy),
    }
    result = {
        "audio_seconds": SECONDS,
        "body_bytes": len(body),
        "seconds": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
