"""What the API process spends on one 10-minute request's body, part by part: the way
af3-serve does each step now against the way it did before (what `vllm serve` and the
standard library do). One thread, median of several runs, same input for both.

    python -m benchmarks.api_parts --out benchmarks/results/api_parts.json
"""

import base64
import io
import json

import numpy as np
import pybase64
import soundfile as sf

from af3_serve.chat.protocol import ChatCompletionRequest
from benchmarks import harness

SECONDS = harness.LONGEST_AUDIO_SECONDS
REPEATS = 7


def main() -> None:
    out = harness.out_path(__doc__)

    wav = harness.wav_bytes(harness.speech_clip(SECONDS))
    data = base64.b64encode(wav).decode()
    part = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": [part]}]}).encode()

    def pcm16_by_numpy() -> np.ndarray:
        samples = sf.read(io.BytesIO(wav), dtype="int16")[0].astype(np.float32)
        samples *= np.float32(1 / 32768)
        return samples

    assert np.array_equal(pcm16_by_numpy(), sf.read(io.BytesIO(wav), dtype="float32")[0])
    parts = {
        "base64_stdlib_validate": lambda: base64.b64decode(data, validate=True),
        "base64_pybase64_validate": lambda: pybase64.b64decode(data, validate=True),
        "json_loads_then_validate": lambda: ChatCompletionRequest.model_validate(json.loads(body)),
        "pydantic_validate_json": lambda: ChatCompletionRequest.model_validate_json(body),
        "wav_libsndfile_float32": lambda: sf.read(io.BytesIO(wav), dtype="float32"),
        "wav_int16_then_numpy": pcm16_by_numpy,
    }
    rows = {name: round(harness.time_it(run, REPEATS), 4) for name, run in parts.items()}
    result = {
        "audio_seconds": SECONDS,
        "body_bytes": len(body),
        "seconds": rows,
        "machine": harness.machine(),
    }
    harness.write_result(out, result)


if __name__ == "__main__":
    main()
