"""What one 10-minute request costs the GPU with the real AF3 shapes, next to what vLLM's
built-in AF3 spends on the CPU of its API process for the same request.

It needs only torch and transformers, no vLLM, so it does not run the serving path
itself: it times its parts with random weights in bfloat16:
our log-mel on the device, the Whisper-large-v3-shaped encoder over 20 full windows
(transformers' WhisperEncoder: the same matmuls as ours on full windows), and the
Qwen2.5-7B prefill of a 15,040-token prompt (transformers' Qwen2 with SDPA; vLLM's
kernels are faster, so this overstates the GPU time). It also times, on the host CPU with
one thread as in vLLM's API process, HF's Whisper feature extractor on the same clip:
the work vLLM's built-in AF3 does per request before the engine sees it. The clip is real
speech; each GPU timing is the fastest of a few runs after a warm-up. Offline, bring the
speech sample along (.cache/tests/pyannote-sample.wav, see benchmarks/README.md).

    python -m benchmarks.gpu_request_cost --out results.json
"""

import argparse
import platform
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2Model, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from benchmarks import harness
from benchmarks.gpu.checkpoint import QWEN25_VOCAB

SECONDS = harness.LONGEST_AUDIO_SECONDS
PROMPT_TOKENS = harness.AF3_AUDIO.max_prompt_tokens + harness.TEMPLATE_TOKENS


# AF3's real shape: AF-Whisper (Whisper-large-v3) and Qwen2.5-7B, as the GPU comparison's
# full-size checkpoint has it.
REAL = harness.model_executor("testing.tiny_checkpoint").PRESETS["real"]


def time_encoder(mel: torch.Tensor, device: torch.device) -> float:
    config = WhisperConfig(
        num_mel_bins=harness.AF3_AUDIO.num_mel_bins,
        d_model=REAL.encoder_dim,
        encoder_layers=REAL.encoder_layers,
        encoder_attention_heads=REAL.encoder_heads,
        encoder_ffn_dim=REAL.encoder_ffn,
        max_source_positions=harness.AF3_AUDIO.window_frames // 2,
    )
    config._attn_implementation = "sdpa"
    with device:
        encoder = WhisperEncoder(config).eval()
    return harness.time_it(lambda: encoder(mel), 3, stat="min")


def time_prefill(device: torch.device) -> float:
    config = Qwen2Config(
        hidden_size=REAL.text_dim,
        intermediate_size=REAL.text_ffn,
        num_hidden_layers=REAL.text_layers,
        num_attention_heads=REAL.text_heads,
        num_key_value_heads=REAL.text_kv_heads,
        vocab_size=QWEN25_VOCAB,
        max_position_embeddings=harness.CONSTANTS.DEFAULT_DECODER_POSITIONS,
        rope_theta=1000000.0,
    )
    config._attn_implementation = "sdpa"
    with device:
        decoder = Qwen2Model(config).eval()
    ids = torch.randint(0, 151000, (1, PROMPT_TOKENS), device=device)
    return harness.time_it(lambda: decoder(ids, use_cache=False), 2, stat="min")


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    audio = harness.speech_clip(SECONDS)
    rows: dict[str, float] = {}

    log_mel = harness.model_executor("audio_features").LogMel(harness.AF3_AUDIO).to(device)
    pcm = torch.from_numpy(audio)
    windows, _ = log_mel.split_windows([pcm.to(device)])
    rows["log_mel_gpu_s"] = harness.time_it(
        lambda: log_mel(log_mel.split_windows([pcm.to(device)])[0]), 3, stat="min"
    )
    mel = log_mel(windows)

    torch.set_default_dtype(torch.bfloat16)
    rows["encoder_20_windows_gpu_s"] = time_encoder(mel.to(torch.bfloat16), device)
    rows["prefill_7b_15040_tokens_gpu_s"] = time_prefill(device)
    torch.set_default_dtype(torch.float32)

    torch.set_num_threads(1)  # vLLM's renderer runs the HF processor on one thread
    extractor = harness.AF3_AUDIO.feature_extractor()
    windows_np = [audio[i : i + 480000] for i in range(0, audio.size, 480000)]
    rows["hf_feature_extractor_cpu_1_thread_s"] = harness.time_it(  # one cold run
        lambda: extractor(
            windows_np, sampling_rate=16000, return_attention_mask=True, padding="max_length"
        ),
        1,
        warmup=0,
    )

    gpu = rows["log_mel_gpu_s"] + rows["encoder_20_windows_gpu_s"]
    gpu += rows["prefill_7b_15040_tokens_gpu_s"]
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "audio_seconds": SECONDS,
        "seconds": {k: round(v, 5) for k, v in rows.items()},
        "gpu_s_per_request": round(gpu, 4),
        "gpu_bound_requests_per_s": round(1 / gpu, 2),
        "note": "random weights, bfloat16, batch of one request; transformers' kernels, not "
        "vLLM's; the host CPU's feature extractor is HF's numpy path on one thread",
    }
    harness.write_result(args.out, result)


if __name__ == "__main__":
    main()
