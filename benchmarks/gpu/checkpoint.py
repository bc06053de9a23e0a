"""The tiny-checkpoint builder's AF3 checkpoint at any preset, built where it fits: the
full-size one (`real`: 8.3B parameters, 15.4 GiB in bf16) on the GPU.

The same tokenizer, config (`build_config` of the preset), transformers' own weight
initialisation, official weight names and processor files as
`af3_model_executor.testing.tiny_checkpoint`; what differs is memory. The model is built
in the serving dtype on the target device, where 8B parameters initialise in seconds, and
written in hub shards (`model-0000N-of-0000M.safetensors` and their index), one shard on
the host at a time; `build_checkpoint` would hold float32 parameters and their serialised
copy, 66 GB at this size.

The tiny tokenizer has 384 tokens; Qwen2.5's embedding and LM head have 151,936 rows, and
the LM head is a real part of the decoder's cost, so the vocabulary is padded to that. The
padded LM-head rows are zero: their logit is exactly 0, below the real tokens' top logits,
so greedy decoding only picks tokens the tokenizer can detokenize.

    python -m benchmarks.gpu.checkpoint OUT_DIR --preset real --device cuda --dtype bfloat16

prints the description as JSON. A process of its own, so that no CUDA memory stays held
where servers start next.
"""

import argparse
import json
import time
from pathlib import Path

import torch

QWEN25_VOCAB = 151936


def write_checkpoint(
    out_dir: Path, preset: str = "real", device: str = "cuda", dtype: torch.dtype = torch.bfloat16
) -> dict:
    """The checkpoint in `out_dir` (AF3, hub layout); returns its description, also written
    as the builder's marker file."""
    from huggingface_hub import save_torch_state_dict
    from transformers import AudioFlamingo3ForConditionalGeneration

    from af3_model_executor.constants import TINY_CHECKPOINT_MARKER
    from af3_model_executor.processor_files import save_processor
    from af3_model_executor.testing.tiny_checkpoint import (
        PRESETS,
        RELEASES,
        build_config,
        build_tokenizer,
        official_key,
    )

    started = time.monotonic()
    release = RELEASES["af3"]
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir, release)
    config = build_config(PRESETS[preset], tokenizer, release)
    config.text_config.vocab_size = QWEN25_VOCAB
    for part in (config, config.text_config, config.audio_config):
        part.dtype = dtype
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), torch.no_grad():
            model = AudioFlamingo3ForConditionalGeneration(config).eval()
            model.get_output_embeddings().weight[len(tokenizer) :] = 0
    finally:
        torch.set_default_dtype(default)
    state = {official_key(k): v for k, v in model.state_dict().items()}
    for old in out_dir.glob("model*.safetensors*"):
        old.unlink()
    # Hub-sized shards; small ones for the small presets, so that they load shards too.
    shard = "4GB" if preset == "real" else "10MB"
    save_torch_state_dict(state, out_dir, max_shard_size=shard, metadata={"format": "pt"})
    config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    save_processor(
        tokenizer, tokenizer.chat_template, out_dir, release.family, release.max_audio_seconds
    )
    description = {
        "preset": preset,
        "seed": 0,
        "think": False,
        "random_weights": True,
        "family": "af3",
        "layout": "hf",
        "dtype": str(dtype).removeprefix("torch."),
        "vocab_size": QWEN25_VOCAB,
        "parameters": sum(t.numel() for t in state.values()),
        "weight_bytes": sum(t.numel() * t.element_size() for t in state.values()),
        "built_on": device,
        "build_s": round(time.monotonic() - started, 1),
    }
    (out_dir / TINY_CHECKPOINT_MARKER).write_text(json.dumps(description) + "\n")
    return description


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--preset", default="real")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(json.dumps(write_checkpoint(args.out_dir, args.preset, args.device, dtype)))
