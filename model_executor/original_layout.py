"""AF3 checkpoints in NVIDIA's original llava-style layout, converted to the HF layout.

NVIDIA publishes AF3 (`nvidia/audio-flamingo-3`) and AF3-Chat (`nvidia/audio-flamingo-3-chat`,
only in this layout) as three HF folders side by side: `llm/` (Qwen2ForCausalLM and its
tokenizer), `sound_tower/` (the AF-Whisper encoder, saved under transformers'
AudioFlamingo3Encoder parameter names) and `sound_mm_projector/` (Linear-GELU-Linear as
`layers.{0,2}`), plus a llava-style `config.json` and, for the base model, the
thinking-mode LoRA in `stage35/`. The server loads the layout of `nvidia/audio-flamingo-3-hf`,
so `convert` rewrites the former into the latter, refusing unless every tensor finds its
place.
"""

import argparse
import hashlib
import json
import logging
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import (
    AudioFlamingo3Config,
    AudioFlamingo3ForConditionalGeneration,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
    Qwen2AudioEncoderConfig,
)

from af3_model_executor.tiny_checkpoint import chatml_template, official_key, save_processor

logger = logging.getLogger("af3_serve.convert")

COMPONENTS = ("llm", "sound_tower", "sound_mm_projector")
MARKER = "AF3_CONVERTED.json"
AUDIO_TOKEN = "<sound>"
# Files above this size are split into shards, as transformers' save_pretrained does.
SHARD_BYTES = 5 * 10**9
# Keys of a component's config.json that describe the file, not the network.
_BOOKKEEPING = ("_name_or_path", "architectures", "transformers_version", "model_type")

# ChatML like the released checkpoints, but every part of a user turn where it stands:
# AF3-Chat conversations place each audio among the text that refers to it.
CHAT_TEMPLATE = chatml_template(
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}{{ '<sound>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
)

# Prefix renames of the thinking adapter, HF names -> original names.
_ADAPTER_RENAMES = (
    ("base_model.model.model.language_model.", "base_model.model.llm.model."),
    ("base_model.model.lm_head.", "base_model.model.llm.lm_head."),
)
_NON_LORA_RENAMES = (
    (
        "base_model.model.model.multi_modal_projector.linear_1.",
        "base_model.model.sound_mm_projector.layers.0.",
    ),
    (
        "base_model.model.model.multi_modal_projector.linear_2.",
        "base_model.model.sound_mm_projector.layers.2.",
    ),
    ("base_model.model.model.audio_tower.", "base_model.model.sound_tower."),
)
# The adaptor's layers, original names -> HF names.
_PROJECTOR_LAYERS = (("layers.0.", "linear_1."), ("layers.2.", "linear_2."))


class ConversionError(ValueError):
    """The checkpoint cannot be converted as it is; the message says why."""


# --- reading safetensors folders ---------------------------------------------------------


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, for a single or sharded folder."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: folder / name for key, name in weight_map.items()}
    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            files.update(dict.fromkeys(f.keys(), path))
    if not files:
        raise ConversionError(f"{folder} holds no safetensors weights")
    return files


def _shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    """Shapes from the file headers, without reading the tensors."""
    shapes = {}
    for path in sorted(set(files.values())):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if files.get(key) == path:
                    shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(set(_tensor_files(folder).values())):
        tensors.update(load_file(path))
    return tensors


def _write_index(folder: Path, weight_map: dict[str, str], total_size: int) -> None:
    """The index transformers' loaders read for a sharded checkpoint."""
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _save_sharded(tensors: dict[str, torch.Tensor], folder: Path, shards: int) -> None:
    keys = list(tensors)
    size = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: tensors[key] for key in keys[i * size : (i + 1) * size]}
        save_file(part, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    _write_index(folder, weight_map, sum(t.numel() * t.element_size() for t in tensors.values()))


# --- HF layout -> original layout (tests, tiny checkpoints) ------------------------------


def _swap_prefix(key: str, renames: tuple[tuple[str, str], ...]) -> str | None:
    """`key` with the first matching old prefix replaced by its new one, else None."""
    for old, new in renames:
        if key.startswith(old):
            return new + key.removeprefix(old)
    return None


def _split_hf_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {c: {} for c in COMPONENTS}
    for key, tensor in state.items():
        if key.startswith("language_model."):
            parts["llm"][key.removeprefix("language_model.")] = tensor
        elif key.startswith("audio_tower."):
            parts["sound_tower"][key.removeprefix("audio_tower.")] = tensor
        elif key.startswith("multi_modal_projector."):
            hf_to_original = tuple((hf, original) for original, hf in _PROJECTOR_LAYERS)
            name = _swap_prefix(key.removeprefix("multi_modal_projector."), hf_to_original)
            if name is None:
                raise ConversionError(f"unexpected tensor {key} in the HF checkpoint")
            parts["sound_mm_projector"][name] = tensor
        else:
            raise ConversionError(f"unexpected tensor {key} in the HF checkpoint")
    return parts


def _sound_tower_config(config: AudioFlamingo3Config) -> Qwen2AudioEncoderConfig:
    """The encoder config as the original release saves it: AF-Whisper is a Qwen2-Audio
    encoder class, so its config uses the Whisper field names."""
    audio = config.audio_config
    return Qwen2AudioEncoderConfig(
        num_mel_bins=audio.num_mel_bins,
        encoder_layers=audio.num_hidden_layers,
        encoder_attention_heads=audio.num_attention_heads,
        encoder_ffn_dim=audio.intermediate_size,
        encoder_layerdrop=audio.layerdrop,
        d_model=audio.hidden_size,
        dropout=audio.dropout,
        attention_dropout=audio.attention_dropout,
        activation_function=audio.activation_function,
        activation_dropout=audio.activation_dropout,
        scale_embedding=audio.scale_embedding,
        initializer_range=audio.initializer_range,
        max_source_positions=audio.max_source_positions,
        architectures=["AFWhisperEncoder"],
    )


def _rename_keys(
    tensors: dict[str, torch.Tensor], renames: tuple[tuple[str, str], ...]
) -> dict[str, torch.Tensor]:
    return {_swap_prefix(key, renames) or key: tensor for key, tensor in tensors.items()}


def _write_stage35(think_dir: Path, out_dir: Path) -> None:
    """The thinking adapter under the original module names, based on out_dir."""
    stage35 = out_dir / "stage35"
    stage35.mkdir()
    adapter = load_file(think_dir / "adapter_model.safetensors")
    save_file(_rename_keys(adapter, _ADAPTER_RENAMES), stage35 / "adapter_model.safetensors")
    non_lora = torch.load(think_dir / "non_lora_trainables.bin", weights_only=True)
    torch.save(_rename_keys(non_lora, _NON_LORA_RENAMES), stage35 / "non_lora_trainables.bin")
    adapter_config = json.loads((think_dir / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(out_dir.resolve())
    (stage35 / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")


def write_original_layout(hf_dir: Path, out_dir: Path) -> Path:
    """Split an HF-layout checkpoint into NVIDIA's original layout (llm/ in two shards)."""
    config = AudioFlamingo3Config.from_pretrained(hf_dir)
    parts = _split_hf_state(_read_tensors(hf_dir))
    dirs = {name: out_dir / name for name in COMPONENTS}
    for folder in dirs.values():
        folder.mkdir(parents=True)

    text_config = config.text_config
    text_config.architectures = ["Qwen2ForCausalLM"]
    text_config.save_pretrained(dirs["llm"])
    GenerationConfig.from_pretrained(hf_dir).save_pretrained(dirs["llm"])
    AutoTokenizer.from_pretrained(hf_dir).save_pretrained(dirs["llm"])
    _save_sharded(parts["llm"], dirs["llm"], shards=2)

    tower_config = _sound_tower_config(config)
    tower_config.save_pretrained(dirs["sound_tower"])
    save_file(parts["sound_tower"], dirs["sound_tower"] / "model.safetensors")

    projector_config = {
        "architectures": ["SoundMultimodalProjector"],
        "model_type": "sound_mm_projector",
        "sound_mm_projector_type": "mlp",
    }
    (dirs["sound_mm_projector"] / "config.json").write_text(json.dumps(projector_config) + "\n")
    save_file(parts["sound_mm_projector"], dirs["sound_mm_projector"] / "model.safetensors")

    top = {
        "architectures": ["LlavaLlamaModel"],
        "model_type": "llava_llama",
        "llm_cfg": json.loads((dirs["llm"] / "config.json").read_text()),
        "sound_tower_cfg": tower_config.to_dict(),
        "sound_mm_projector_cfg": projector_config,
        "hidden_size": text_config.hidden_size,
        "sound_hidden_size": config.audio_config.hidden_size,
        "sound_encoder": '{"_target_": "llava.model.encoders.BasicSoundEncoder"}',
        "media_tokens": {"sound": AUDIO_TOKEN},
    }
    (out_dir / "config.json").write_text(json.dumps(top, indent=2) + "\n")
    if (hf_dir / "think").is_dir():
        _write_stage35(hf_dir / "think", out_dir)
    return out_dir


# --- original layout -> HF layout -------------------------------------------------------


def is_original_layout(path: Path) -> bool:
    """A local folder with any of the original components; convert() then refuses an
    incomplete one by name instead of the server failing on an unknown layout."""
    return path.is_dir() and any((path / name).is_dir() for name in COMPONENTS)


def fingerprint(src: Path) -> dict[str, list[int]]:
    """Relative path -> [size, mtime_ns] of every file: cheap, and changes with any rewrite."""
    result = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        stat = path.stat()
        result[path.relative_to(src).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return result


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path} is missing")
    return json.loads(path.read_text())


def _check_source(src: Path) -> None:
    if not src.is_dir():
        raise ConversionError(f"{src} is not a folder")
    missing = [f"{name}/" for name in COMPONENTS if not (src / name).is_dir()]
    if missing:
        raise ConversionError(
            f"{src} is not an AF3 checkpoint in the original layout: it lacks "
            f"{', '.join(missing)} (expected llm/, sound_tower/ and sound_mm_projector/)"
        )


def _check_destination(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise ConversionError(f"{dst} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise ConversionError(f"{dst} exists and is not empty (--overwrite replaces it)")


def build_config(src: Path, audio_token_id: int) -> AudioFlamingo3Config:
    """The HF config from the components' own configs (not the 7B defaults)."""
    projector = _load_json(src / "sound_mm_projector" / "config.json")
    kind = projector.get("sound_mm_projector_type", "mlp")
    if kind != "mlp":
        raise ConversionError(f"sound_mm_projector type '{kind}' is not AF3's 'mlp' adaptor")
    text = _load_json(src / "llm" / "config.json")
    audio = _load_json(src / "sound_tower" / "config.json")
    audio = {k: v for k, v in audio.items() if k not in _BOOKKEEPING}
    text = {k: v for k, v in text.items() if k not in ("_name_or_path", "architectures")}
    config = AudioFlamingo3Config(
        audio_config={**audio, "model_type": "audioflamingo3_encoder"},
        text_config=text,
        audio_token_id=audio_token_id,
        projector_hidden_act="gelu",
        projector_bias=True,
        architectures=["AudioFlamingo3ForConditionalGeneration"],
    )
    config.dtype = config.text_config.dtype
    return config


def _official_name(component: str, key: str) -> str | None:
    """The HF file name of an original tensor, or None when it has no place."""
    if component == "llm":
        return "language_model." + key
    if component == "sound_tower":
        return "audio_tower." + key
    name = _swap_prefix(key, _PROJECTOR_LAYERS)
    return None if name is None else "multi_modal_projector." + name


def _expected_shapes(config: AudioFlamingo3Config) -> dict[str, tuple[int, ...]]:
    """Every parameter the HF model has, by official file name, from a meta-device model."""
    with torch.device("meta"):
        model = AudioFlamingo3ForConditionalGeneration(config)
    return {official_key(k): tuple(v.shape) for k, v in model.state_dict().items()}


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return f"{len(names)} ({shown}{', ...' if len(names) > 5 else ''})"


def plan_tensors(src: Path, config: AudioFlamingo3Config) -> dict[str, tuple[Path, str]]:
    """Official name -> (file, source key) of every parameter, in the model's order.

    Refuses tensors that have no place in the model, shapes that differ from the
    model's and parameters that no tensor fills, naming them."""
    expected = _expected_shapes(config)
    found: dict[str, tuple[Path, str]] = {}
    unused, mismatched, mismatched_names = [], [], set()
    for component in COMPONENTS:
        files = _tensor_files(src / component)
        for key, shape in _shapes(files).items():
            name = _official_name(component, key)
            source = f"{component}/{key}"
            if name not in expected:
                unused.append(source)
            elif shape != expected[name]:
                needed = list(expected[name])
                mismatched.append(f"{source} is {list(shape)}, the model needs {needed}")
                mismatched_names.add(name)
            else:
                found[name] = (files[key], key)
    missing = [name for name in expected if name not in found and name not in mismatched_names]
    problems = []
    if unused:
        problems.append(f"tensors with no place in the model: {_listing(unused)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if missing:
        problems.append(f"parameters no tensor fills: {_listing(missing)}")
    if problems:
        raise ConversionError(f"cannot convert {src}: " + "; ".join(problems))
    return {name: found[name] for name in expected}


def _flush(tensors: dict[str, torch.Tensor], folder: Path, number: int) -> tuple[Path, list[str]]:
    path = folder / f"part-{number}.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    return path, list(tensors)


def _write_weights(
    plan: dict[str, tuple[Path, str]], folder: Path, progress: bool, shard_bytes: int
) -> dict[str, int]:
    """Copy the tensors as stored (dtype included), a shard at a time so memory stays
    bounded by one shard; returns counts for the summary."""
    parts: list[tuple[Path, list[str]]] = []
    shard: dict[str, torch.Tensor] = {}
    shard_size = parameters = total = 0
    with ExitStack() as stack:
        handles = {}
        for name, (path, key) in tqdm(
            plan.items(), desc="af3-convert", unit="tensor", disable=not progress
        ):
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(path, framework="pt"))
            tensor = handles[path].get_tensor(key)
            size = tensor.numel() * tensor.element_size()
            if shard and shard_size + size > shard_bytes:
                parts.append(_flush(shard, folder, len(parts)))
                shard, shard_size = {}, 0
            shard[name] = tensor
            shard_size += size
            parameters += tensor.numel()
            total += size
    parts.append(_flush(shard, folder, len(parts)))
    if len(parts) == 1:
        parts[0][0].rename(folder / "model.safetensors")
    else:
        weight_map = {}
        for i, (path, keys) in enumerate(parts):
            name = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
            path.rename(folder / name)
            weight_map.update(dict.fromkeys(keys, name))
        _write_index(folder, weight_map, total)
    return {"tensors": len(plan), "parameters": parameters, "bytes": total}


def _audio_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    vocab = tokenizer.get_vocab()
    if AUDIO_TOKEN not in vocab:
        raise ConversionError(f"the tokenizer in llm/ has no {AUDIO_TOKEN} token")
    return vocab[AUDIO_TOKEN]


def _write_processor(tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Tokenizer, feature extractor and chat template, as the server loads them; the
    tokenizer carries the template too, since the server renders prompts with it."""
    tokenizer.chat_template = CHAT_TEMPLATE
    save_processor(tokenizer, CHAT_TEMPLATE, folder)


def _generation_config(src: Path, config: AudioFlamingo3Config) -> GenerationConfig:
    if (src / "llm" / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(src / "llm")
    return GenerationConfig.from_model_config(config.text_config)


def _move_into_place(tmp: Path, dst: Path) -> None:
    """Renames only, so DST is either the old folder or the complete new one."""
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old)
    else:
        tmp.rename(dst)


def convert(
    src: Path,
    dst: Path,
    progress: bool = True,
    overwrite: bool = False,
    shard_bytes: int = SHARD_BYTES,
) -> Path:
    """Convert an original-layout checkpoint into the HF layout in DST."""
    src, dst = Path(src), Path(dst)
    _check_source(src)
    _check_destination(dst, overwrite)
    source_fingerprint = fingerprint(src)
    tokenizer = AutoTokenizer.from_pretrained(src / "llm")
    config = build_config(src, _audio_token_id(tokenizer))
    plan = plan_tensors(src, config)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        stats = _write_weights(plan, tmp, progress, shard_bytes)
        config.save_pretrained(tmp)
        _generation_config(src, config).save_pretrained(tmp)
        _write_processor(tokenizer, tmp)
        think = (src / "stage35").is_dir()
        if think:
            shutil.copytree(src / "stage35", tmp / "think")
        marker = {
            "source": str(src.resolve()),
            "fingerprint": source_fingerprint,
            **stats,
            "think_adapter": think,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        _move_into_place(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _recorded(dst: Path) -> dict | None:
    try:
        return json.loads((dst / MARKER).read_text())
    except (OSError, ValueError):
        return None


def resolve_model_dir(model: str, cache_dir: Path) -> str:
    """The folder to serve for `model`: an original-layout folder is converted into
    cache_dir once and again whenever a source file changes; anything else is returned
    unchanged (an HF folder, a hub id)."""
    path = Path(model)
    if not is_original_layout(path):
        return model
    src = path.resolve()
    dst = Path(cache_dir) / hashlib.sha256(str(src).encode()).hexdigest()[:16]
    recorded = _recorded(dst)
    current = {"source": str(src), "fingerprint": fingerprint(src)}
    if recorded is not None and all(recorded.get(k) == v for k, v in current.items()):
        logger.info("using %s, converted earlier from %s", dst, src)
        return str(dst)
    reason = "a source file changed" if recorded else "no conversion yet"
    logger.info("converting original-layout checkpoint %s into %s (%s)", src, dst, reason)
    convert(src, dst, overwrite=True)
    logger.info("converted %s into %s", src, dst)
    return str(dst)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="af3-convert",
        description="Convert an AF3 checkpoint from NVIDIA's original llava-style layout "
        "(llm/, sound_tower/, sound_mm_projector/, stage35/) to the HF layout af3-serve loads.",
    )
    parser.add_argument("src", type=Path, help="the original-layout checkpoint folder")
    parser.add_argument("dst", type=Path, help="the HF-layout folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    try:
        dst = convert(args.src, args.dst, progress=not args.no_progress, overwrite=args.overwrite)
    except Exception as exc:  # a CLI answer, not a traceback
        print(f"af3-convert: error: {exc}", file=sys.stderr)
        sys.exit(2)
    marker = json.loads((dst / MARKER).read_text())
    think = "think adapter copied to think/" if marker["think_adapter"] else "no think adapter"
    print(
        f"converted {args.src} -> {dst}: {marker['tensors']} tensors, "
        f"{marker['parameters']:,} parameters, {marker['bytes']:,} bytes, {think}"
    )


if __name__ == "__main__":
    main()
