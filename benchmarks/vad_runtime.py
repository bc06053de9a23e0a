"""Silero VAD's two runtimes in the `silero-vad` wheel, on one thread each: its TorchScript
model (torch) and its ONNX model run by onnxruntime as af3-serve runs it
(`af3_serve.inputs.vad.block_probabilities`). CPU seconds per audio second (thread time,
best of --repeats) over a 5-min espeak-ng meeting, and the largest gap between their
speech probabilities.

    python -m benchmarks.vad_runtime --out benchmarks/results/vad_runtime_cpu.json
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from af3_serve.inputs.vad import FRAME, block_probabilities
from benchmarks.harness import SAMPLE_RATE, command_line, machine, write_result
from benchmarks.spoken import meeting


def torchscript(pcm: np.ndarray) -> np.ndarray:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from silero_vad import load_silero_vad

        model = load_silero_vad()
    torch.set_num_threads(1)
    model.reset_states()
    audio = pcm.astype(np.float32) / 32768
    audio = np.pad(audio, (0, (-audio.size) % FRAME))
    with torch.inference_mode():
        return np.array(
            [model(f, SAMPLE_RATE).item() for f in torch.from_numpy(audio).view(-1, FRAME)]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    recording = meeting(300)
    pcm = np.rint(recording.audio * 32768).astype(np.int16)
    result = {
        "command": command_line(),
        "machine": machine(),
        "build": "torch 2.13.0+cpu, onnxruntime 1.32.0, silero-vad 6.2.3",
        "audio_s": round(recording.seconds, 1),
    }
    probs = {}
    for name, run in (
        ("torchscript", torchscript),
        ("onnxruntime", lambda x: block_probabilities(x, 0)),
    ):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.thread_time()
            probs[name] = run(pcm)
            best = min(best, time.thread_time() - start)
        result[name] = {"cpu_s": round(best, 3), "rtfx_one_thread": round(recording.seconds / best)}
    result["onnxruntime_cpu_saving"] = round(
        result["torchscript"]["cpu_s"] / result["onnxruntime"]["cpu_s"], 2
    )
    result["max_probability_gap"] = float(np.abs(probs["torchscript"] - probs["onnxruntime"]).max())
    write_result(args.out, result)


if __name__ == "__main__":
    main()
