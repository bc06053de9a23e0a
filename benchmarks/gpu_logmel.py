"""Log-mel on the GPU (our `LogMel`, as the model computes it) against HF's feature
extractor on the CPU (what vLLM's built-in AF3 runs in its API process).

Runs without vLLM and without an install (a GPU host with only torch and transformers):
the harness loads model_executor/ from this checkout. Checks that
the CUDA features equal HF's within float32 FFT tolerance and times both (the fastest of
--repeats runs after a warm-up) on real speech, per clip length. Offline, bring the
speech sample along (.cache/tests/pyannote-sample.wav, see benchmarks/README.md).

    python -m benchmarks.gpu_logmel --out results.json
"""

import argparse
import platform
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--seconds", nargs="+", type=float, default=[7.3, 61.0, harness.LONGEST_AUDIO_SECONDS]
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    spec = harness.AF3_AUDIO
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with device:
        log_mel = harness.model_executor("audio_features").LogMel(spec)
    extractor = spec.feature_extractor(return_attention_mask=True)

    sample = harness.speech_sample()
    rows = []
    for i, seconds in enumerate(args.seconds):
        audio = harness.speech_clip(seconds, i, sample)
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
        hf_s = harness.time_it(hf, args.repeats, stat="min")
        ours_s = harness.time_it(ours, args.repeats, stat="min")
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
    harness.write_result(args.out, result)


if __name__ == "__main__":
    main()
