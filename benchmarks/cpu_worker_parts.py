"""Where one CPU core's time goes for a 10-minute request in the model worker, for the
`bench` checkpoint: the log-mel (whole clip at once against window by window) and the
encoder's attention (PyTorch's fused SDPA, the kernel vLLM's CPU encoder attention calls).
One thread, as vLLM's CPU build gives its worker one core on a 2-core machine. Each timing
gets fresh audio, as a server's requests do.

    python -m benchmarks.cpu_worker_parts --out benchmarks/results/cpu_worker_parts.json
"""

import itertools

import torch
import torch.nn.functional as F

from af3_model_executor.audio_features import LogMel
from af3_model_executor.audio_spec import AudioSpec
from af3_model_executor.testing.tiny_checkpoint import PRESETS
from benchmarks import harness

SECONDS = harness.LONGEST_AUDIO_SECONDS
REPEATS = 5


def main() -> None:
    out = harness.out_path(__doc__)
    torch.set_num_threads(1)

    log_mel = LogMel(AudioSpec())
    spec = log_mel.spec
    sample, seeds = harness.speech_sample(), itertools.count()

    def windows() -> torch.Tensor:
        clip = harness.speech_clip(SECONDS, next(seeds), sample)
        return log_mel.split_windows([torch.from_numpy(clip)])[0]

    preset = PRESETS["bench"]
    heads, head_dim = preset.encoder_heads, preset.encoder_dim // preset.encoder_heads
    num_windows, positions = len(spec.window_frame_counts(SECONDS * spec.sampling_rate)), 1500

    def qkv() -> list[torch.Tensor]:
        return [torch.randn(1, heads, positions, head_dim) for _ in range(3 * num_windows)]

    def attention(tensors: list[torch.Tensor]) -> None:
        for i in range(num_windows):  # vLLM's CPU wrapper: one call per window
            F.scaled_dot_product_attention(*tensors[3 * i : 3 * i + 3])

    # Median of REPEATS runs after a warm-up, each run on fresh input.
    attention_one_layer = harness.time_it(attention, REPEATS, setup=qkv)
    whole_clip = harness.time_it(log_mel._log_mel, REPEATS, setup=windows)
    by_window = harness.time_it(log_mel, REPEATS, setup=windows)
    result = {
        "audio_seconds": SECONDS,
        "threads": 1,
        "seconds": {
            "log_mel_whole_clip_at_once": round(whole_clip, 4),
            "log_mel_window_by_window": round(by_window, 4),
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
        "machine": harness.machine(),
    }
    harness.write_result(out, result)


if __name__ == "__main__":
    main()
