"""An HF-layout checkpoint rewritten into NVIDIA's original llava layout, for tests and
`af3-tiny-checkpoint --layout original`: what `af3_model_executor.original_layout`
converts back. Names come from the one table in `weight_names`."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AudioFlamingo3Config,
    AutoTokenizer,
    GenerationConfig,
    Qwen2AudioEncoderConfig,
)

from af3_model_executor.constants import AUDIO_TOKEN
from af3_model_executor.original_layout import (
    COMPONENTS,
    ConversionError,
    _tensor_files,
    _write_index,
)
from af3_model_executor.weight_names import OFFICIAL_PREFIXES, PEFT_PREFIX, original_name


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(set(_tensor_files(folder).values())):
        tensors.update(load_file(path))
    return tensors


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


def _split_hf_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Official names -> each component's tensors under the names of its folder."""
    parts: dict[str, dict[str, torch.Tensor]] = {c: {} for c in COMPONENTS}
    for key, tensor in state.items():
        name = original_name(key) if key.startswith(OFFICIAL_PREFIXES) else None
        if name is None:
            raise ConversionError(f"unexpected tensor {key} in the HF checkpoint")
        component, inside = name.split(".", 1)
        parts[component][inside] = tensor
    return parts


# The original release's Whisper field names for transformers' AF3 audio config fields.
_WHISPER_FIELDS = {
    "encoder_layers": "num_hidden_layers",
    "encoder_attention_heads": "num_attention_heads",
    "encoder_ffn_dim": "intermediate_size",
    "encoder_layerdrop": "layerdrop",
    "d_model": "hidden_size",
}
_SAME_FIELDS = (
    "num_mel_bins",
    "dropout",
    "attention_dropout",
    "activation_function",
    "activation_dropout",
    "scale_embedding",
    "initializer_range",
    "max_source_positions",
)


def _sound_tower_config(config: AudioFlamingo3Config) -> Qwen2AudioEncoderConfig:
    """The encoder config as the original release saves it: AF-Whisper is a Qwen2-Audio
    encoder class, so its config uses the Whisper field names."""
    audio = config.audio_config
    fields = {whisper: getattr(audio, ours) for whisper, ours in _WHISPER_FIELDS.items()}
    fields |= {name: getattr(audio, name) for name in _SAME_FIELDS}
    return Qwen2AudioEncoderConfig(**fields, architectures=["AFWhisperEncoder"])


def _original_adapter_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PEFT adapter's tensors under the original module names (unknown names as they
    are), as the release's stage35/ holds them."""
    renamed = {}
    for key, tensor in tensors.items():
        name = original_name(key)
        prefix = PEFT_PREFIX if key.startswith(PEFT_PREFIX) else ""
        renamed[key if name is None else prefix + name] = tensor
    return renamed


def _write_stage35(think_dir: Path, out_dir: Path) -> None:
    """The thinking adapter under the original module names, based on out_dir."""
    stage35 = out_dir / "stage35"
    stage35.mkdir()
    adapter = load_file(think_dir / "adapter_model.safetensors")
    save_file(_original_adapter_names(adapter), stage35 / "adapter_model.safetensors")
    non_lora = torch.load(think_dir / "non_lora_trainables.bin", weights_only=True)
    torch.save(_original_adapter_names(non_lora), stage35 / "non_lora_trainables.bin")
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
