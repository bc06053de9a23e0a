"""Log-mel on the GPU (our `LogMel`, as the model computes it) against HF's feature
extractor on the CPU (what vLLM's built-in AF3 runs in its API process).

Runs without vLLM (the lent GPU machines have torch and transformers only): it loads
`model_executor/audio_features.py` by path. Checks that the CUDA features equal HF's
within float32 FFT tolerance and times both, per 10-minute clip.

    python benchmarks/gpu_logmel.py --out results.json
"""

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

ROOT = Path(__file__).resolve().parents[1]


def load_audio_features():  # noqa: ANN201 - a module object
    spec = importlib.util.spec_from_file_location(
        "audio_features", ROOT / "model_executor" / "audio_features.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    tone = 0.3 * np.sin(2 * np.pi * (220 + 80 * np.sin(0.5 * t)) * t)
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def timed(fn, repeats: int) -> float:  # noqa: ANN001
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", nargs="+", type=float, default=[7.3, 61.0, 600.0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    af = load_audio_features()
    spec = af.AudioSpec()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with device:
        log_mel = af.LogMel(spec)
    extractor = WhisperFeatureExtractor(feature_size=128, return_attention_mask=True)

    rows = []
    for i, seconds in enumerate(args.seconds):
        audio = clip(seconds, i)
        windows = [
            audio[j : j + spec.window_samples] for j in range(0, audio.size, spec.window_samples)
        ]

        def hf(windows: list[np.ndarray] = windows) -> np.ndarray:
            return extractor(
                windows, sampling_rate=16000, padding="max_length", return_tensors="np"
            )["input_features"]

        pcm = torch.from_numpy(audio)

        def ours(pcm: torch.Tensor = pcm) -> torch.Tensor:
            batch, _ = log_mel.split_windows([pcm.to(device)])
            return log_mel(batch)

        gap = float(np.abs(ours().cpu().numpy() - hf()).max())
        hf_s, ours_s = timed(hf, args.repeats), timed(ours, args.repeats)
        rows.append(
            {
                "audio_seconds": seconds,
                "max_abs_diff": gap,
                "hf_cpu_s": round(hf_s, 5),
                "ours_device_s": round(ours_s, 5),
                "speedup": round(hf_s / ours_s, 1),
            }
        )
        print(rows[-1], flush=True)

    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "note": "HF feature extractor on the host CPU (torch STFT); ours on the device; "
        "ours includes the host-to-device copy of the PCM",
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
