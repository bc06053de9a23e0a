"""Where one CPU core's time goes for a 10-minute request in the model worker, for the
`bench` checkpoint: the log-mel (whole clip at once against window by window) and the
encoder's attention (PyTorch's fused SDPA, the kernel vLLM's CPU encoder attention calls).
One thread, as vLLM's CPU build gives its worker one core on a 2-core machine. Each timing
gets fresh audio, as a server's requests do.

    python -m benchmarks.cpu_worker_parts --out benchmarks/results/cpu_worker_parts.json
"""

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from af3_model_executor.audio_features import AudioSpec, LogMel
from af3_model_executor.tiny_checkpoint import PRESETS

SECONDS = 600
REPEATS = 5


def median_of(make_input: Callable[[], object], run: Callable[[object], object]) -> float:
    """Median of REPEATS runs, each on a fresh input (a warm-up run first)."""
    run(make_input())
    times = []
    for _ in range(REPEATS):
        value = make_input()
        start = time.perf_counter()
        run(value)
        times.append(time.perf_counter() - start)
    return round(sorted(times)[REPEATS // 2], 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)

    log_mel = LogMel(AudioSpec())
    spec = log_mel.spec

    def windows() -> torch.Tensor:
        return log_mel.split_windows([torch.randn(SECONDS * spec.sampling_rate) * 0.1])[0]

    preset = PRESETS["bench"]
    heads, head_dim = preset.encoder_heads, preset.encoder_dim // preset.encoder_heads
    num_windows, positions = len(spec.window_frame_counts(SECONDS * spec.sampling_rate)), 1500

    def qkv() -> list[torch.Tensor]:
        return [torch.randn(1, heads, positions, head_dim) for _ in range(3 * num_windows)]

    def attention(tensors: list[torch.Tensor]) -> None:
        for i in range(num_windows):  # vLLM's CPU wrapper: one call per window
            F.scaled_dot_product_attention(*tensors[3 * i : 3 * i + 3])

    attention_one_layer = median_of(qkv, attention)
    result = {
        "audio_seconds": SECONDS,
        "threads": 1,
        "seconds": {
            "log_mel_whole_clip_at_once": median_of(windows, log_mel._log_mel),
            "log_mel_window_by_window": median_of(windows, log_mel),
            "encoder_attention_all_layers": round(attention_one_layer * preset.encoder_layers, 4),
        },
        "encoder_attention_shape": {
            "windows": num_windows,
            "layers": preset.encoder_layers,
            "heads": heads,
            "positions": positions,
            "head_dim": head_dim,
        },
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
