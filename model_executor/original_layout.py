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
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import (
    AudioFlamingo3Config,
    AudioFlamingo3ForConditionalGeneration,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
)

from af3_model_executor import prepared_cache
from af3_model_executor.constants import AUDIO_TOKEN
from af3_model_executor.processor_files import AUDIO_PLACEHOLDER, chatml_template, save_processor
from af3_model_executor.weight_names import official_name

logger = logging.getLogger("af3_serve.convert")

COMPONENTS = ("llm", "sound_tower", "sound_mm_projector")
MARKER = "AF3_CONVERTED.json"
# Changes whenever the converter writes a different folder for the same source: folders
# converted by another version are converted again.
FORMAT_VERSION = 2
# Files above this size are split into shards, as transformers' save_pretrained does.
SHARD_BYTES = 5 * 10**9
# Keys of a component's config.json that describe the file, not the network.
_BOOKKEEPING = ("_name_or_path", "architectures", "transformers_version", "model_type")

# ChatML like the released checkpoints, but every part of a user turn where it stands:
# AF3-Chat conversations place each audio among the text that refers to it.
CHAT_TEMPLATE = chatml_template(
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}"
    + AUDIO_PLACEHOLDER
    + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
)


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


def _write_index(folder: Path, weight_map: dict[str, str], total_size: int) -> None:
    """The index transformers' loaders read for a sharded checkpoint."""
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# --- original layout -> HF layout -------------------------------------------------------


def is_original_layout(path: Path) -> bool:
    """A local folder with any of the original components; convert() then refuses an
    incomplete one by name instead of the server failing on an unknown layout."""
    return path.is_dir() and any((path / name).is_dir() for name in COMPONENTS)


def source_key(src: Path) -> dict:
    """What a converted folder records about its source (see prepared_cache)."""
    return prepared_cache.source_key(FORMAT_VERSION, {"checkpoint": prepared_cache.Source(src)})


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
    """The HF file name of a tensor of a component's folder, or None when it has no place."""
    return official_name(f"{component}.{key}")


def _expected_shapes(config: AudioFlamingo3Config) -> dict[str, tuple[int, ...]]:
    """Every parameter the HF model has, by official file name, from a meta-device model."""
    with torch.device("meta"):
        model = AudioFlamingo3ForConditionalGeneration(config)
    return {official_name(k) or k: tuple(v.shape) for k, v in model.state_dict().items()}


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
    key = source_key(src)
    tokenizer = AutoTokenizer.from_pretrained(src / "llm")
    config = build_config(src, _audio_token_id(tokenizer))
    plan = plan_tensors(src, config)

    def write(folder: Path) -> dict:
        stats = _write_weights(plan, folder, progress, shard_bytes)
        config.save_pretrained(folder)
        _generation_config(src, config).save_pretrained(folder)
        _write_processor(tokenizer, folder)
        think = (src / "stage35").is_dir()
        if think:
            shutil.copytree(src / "stage35", folder / "think")
        return {**stats, "think_adapter": think}

    prepared_cache.build(dst, MARKER, key, write)
    return dst


def resolve_model_dir(model: str, cache_dir: Path) -> str:
    """The folder to serve for `model`: an original-layout folder is converted into
    cache_dir once and again whenever a source file changes; anything else is returned
    unchanged (an HF folder, a hub id)."""
    path = Path(model)
    if not is_original_layout(path):
        return model
    src = path.resolve()
    dst = Path(cache_dir) / hashlib.sha256(str(src).encode()).hexdigest()[:16]
    record = prepared_cache.recorded(dst, MARKER)
    if prepared_cache.matches(record, source_key(src)):
        logger.info("using %s, converted earlier from %s", dst, src)
        return str(dst)
    reason = "a source file changed" if record else "no conversion yet"
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
