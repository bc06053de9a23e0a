"""A random-weight AF3 checkpoint of any preset in the official layout, written streamed:
the full-size one (`--preset real`, 8.3B parameters, 15.4 GiB in bf16) on the GPU machine.

The tiny-checkpoint builder's code path (`af3_model_executor.testing.tiny_checkpoint`):
its tokenizer, its config (`build_config` of the preset), transformers' own
`AudioFlamingo3ForConditionalGeneration` initialising the weights, its official weight
names, its processor files and its random-weights marker. What differs is memory: the
model is built in the target dtype on the target device (the GPU, where initialising 8B
parameters takes seconds), and each tensor is copied to the host and written on its own
into safetensors shards (the hub's `model-0000N-of-0000M.safetensors` and index), so the
host holds one tensor at a time instead of the whole model twice (`build_checkpoint`:
float32 parameters plus `save_file`'s serialised copy, 66 GB at this size).

The tiny tokenizer has 384 tokens; Qwen2.5's embedding and LM head have 151,936 rows,
and the LM head is a real part of the decoder's cost, so `--vocab-size` pads them. The
padded LM-head rows are zero: their logit is exactly 0, below the real tokens' top
logits, so greedy decoding only ever picks tokens the tokenizer can detokenize.

    python -m benchmarks.gpu.checkpoint OUT --preset real --device cuda --dtype bfloat16
"""

import argparse
import json
import struct
import time
from pathlib import Path

import torch

QWEN25_VOCAB = 151936
SHARD_BYTES = 4 << 30

_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def write_safetensors(path: Path, tensors: list[tuple[str, torch.Tensor]]) -> int:
    """One safetensors file, the header first, then each tensor copied to the host and
    written alone. Returns the bytes written."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for _, tensor in tensors:
            host = tensor.detach().contiguous().cpu()
            f.write(memoryview(host.view(torch.uint8).numpy()))
            del host
    return 8 + len(encoded) + offset


def write_checkpoint(
    out_dir: Path,
    preset_name: str = "real",
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    vocab_size: int | None = QWEN25_VOCAB,
    seed: int = 0,
    shard_bytes: int = SHARD_BYTES,
) -> dict:
    """The checkpoint in `out_dir` (AF3 family, hub layout); returns its description. On
    the `meta` device nothing is written but the tokenizer: the shapes, names and sizes
    are checked (the dry run does this for the real preset)."""
    from transformers import AudioFlamingo3ForConditionalGeneration

    from af3_model_executor.families import AF3
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
    config = build_config(PRESETS[preset_name], tokenizer, release)
    tokens = len(tokenizer)
    if vocab_size is not None and vocab_size > config.text_config.vocab_size:
        config.text_config.vocab_size = vocab_size
    for part in (config, config.text_config, config.audio_config):
        part.dtype = dtype

    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AudioFlamingo3ForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    if device != "meta":
        with torch.no_grad():
            model.get_output_embeddings().weight[tokens:] = 0
    built_s = time.monotonic() - started

    state = [(official_key(k), v) for k, v in model.state_dict().items()]
    if device == "meta":
        return {
            "preset": preset_name,
            "dtype": str(dtype).removeprefix("torch."),
            "tokenizer_tokens": tokens,
            "vocab_size": config.text_config.vocab_size,
            "parameters": sum(t.numel() for _, t in state),
            "weight_bytes": sum(t.numel() * t.element_size() for _, t in state),
            "tensors": len(state),
            "written": False,
        }
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, tensor in state:
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, tensor))
        size += nbytes
    for old in out_dir.glob("model*.safetensors*"):
        old.unlink()
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = (
            "model.safetensors"
            if len(shards) == 1
            else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        )
        write_safetensors(out_dir / name, shard)
        total += sum(t.numel() * t.element_size() for _, t in shard)
        weight_map.update({key: name for key, _ in shard})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    save_processor(tokenizer, tokenizer.chat_template, out_dir, AF3, release.max_audio_seconds)
    parameters = sum(t.numel() for _, t in state)
    del model, state, shards
    description = {
        "preset": preset_name,
        "seed": seed,
        "think": False,
        "random_weights": True,
        "family": "af3",
        "layout": "hf",
        "dtype": str(dtype).removeprefix("torch."),
        "tokenizer_tokens": tokens,
        "vocab_size": config.text_config.vocab_size,
        "parameters": parameters,
        "weight_bytes": total,
        "shards": len(set(weight_map.values())),
        "built_on": device,
        "build_s": round(built_s, 1),
        "total_s": round(time.monotonic() - started, 1),
        "writer": "benchmarks.gpu.checkpoint",
    }
    (out_dir / "AF3_TINY_CHECKPOINT.json").write_text(json.dumps(description) + "\n")
    return description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--preset", default="real")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--vocab-size", type=int, default=QWEN25_VOCAB)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-gib", type=float, default=SHARD_BYTES / (1 << 30))
    args = parser.parse_args()
    description = write_checkpoint(
        args.out_dir,
        args.preset,
        args.device,
        getattr(torch, args.dtype),
        args.vocab_size,
        args.seed,
        int(args.shard_gib * (1 << 30)),
    )
    print(json.dumps(description, indent=1))


if __name__ == "__main__":
    main()
