"""Build a deterministic random-weight AF3 checkpoint in the official layout.

The real `nvidia/audio-flamingo-3-hf` weights cannot be downloaded where our tests
run, so tests and CPU benchmarks use a small checkpoint with the same file layout,
tokenizer special tokens, feature-extractor settings and chat template.
"""

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AudioFlamingo3Config,
    AudioFlamingo3ForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from af3_model_executor.constants import AUDIO_TOKEN
from af3_model_executor.processor_files import AUDIO_PLACEHOLDER, chatml_template, save_processor
from af3_model_executor.testing.original_layout_writer import write_original_layout
from af3_model_executor.weight_names import official_name

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", AUDIO_TOKEN]


# Renders like the real checkpoint's template: every audio of a user turn as one `<sound>`
# at its start, the turn's text right after it.
CHAT_TEMPLATE = chatml_template(
    "{% for part in message['content'] if part['type'] == 'audio' %}"
    + AUDIO_PLACEHOLDER
    + "{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
)

# Text the tokenizer's byte-level BPE merges are learnt from: fixed, so the
# vocabulary is the same on every machine.
_BPE_CORPUS = [
    "You are a helpful assistant.",
    "Transcribe the input speech.",
    "The spoken content of the audio is",
    "What can you hear in this audio clip? Describe the music in detail.",
    "Please think and reason about the input audio before you respond.",
    "the quick brown fox jumps over the lazy dog 0123456789",
    "speech sound music noise question answer language model",
]


@dataclass(frozen=True)
class Preset:
    """Shape of one checkpoint; the text model keeps head_dim >= 32 for vLLM's CPU
    paged attention, and the initializer range is wide enough that greedy decoding
    has clear winners (parity tests compare tokens)."""

    encoder_layers: int
    encoder_dim: int
    encoder_heads: int
    encoder_ffn: int
    text_layers: int
    text_dim: int
    text_heads: int
    text_kv_heads: int
    text_ffn: int
    init_range: float = 0.2


PRESETS = {
    # Fast tests.
    "tiny": Preset(2, 64, 2, 128, 2, 128, 2, 1, 256),
    # One decoder layer of one 32-wide head: the serving pipeline dominates a CPU benchmark.
    "bench": Preset(2, 64, 2, 128, 1, 32, 1, 1, 64),
    # The real AF-Whisper encoder shape (Whisper-large-v3), tiny decoder: encoder benchmarks.
    "real-encoder": Preset(32, 1280, 20, 5120, 1, 64, 1, 1, 128, init_range=0.02),
}


def build_tokenizer(out_dir: Path) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_BPE_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>", AUDIO_TOKEN],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_config(preset: Preset, tokenizer: PreTrainedTokenizerFast) -> AudioFlamingo3Config:
    vocab_size = len(tokenizer)
    return AudioFlamingo3Config(
        audio_config={
            "num_mel_bins": 128,
            "num_hidden_layers": preset.encoder_layers,
            "hidden_size": preset.encoder_dim,
            "num_attention_heads": preset.encoder_heads,
            "intermediate_size": preset.encoder_ffn,
            "max_source_positions": 1500,
            "initializer_range": preset.init_range,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": vocab_size,
            "hidden_size": preset.text_dim,
            "intermediate_size": preset.text_ffn,
            "num_hidden_layers": preset.text_layers,
            "num_attention_heads": preset.text_heads,
            "num_key_value_heads": preset.text_kv_heads,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": False,
            "initializer_range": preset.init_range,
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        },
        audio_token_id=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
        architectures=["AudioFlamingo3ForConditionalGeneration"],
    )


def official_key(hf_key: str) -> str:
    """The published file name of a key of transformers' in-memory module tree."""
    name = official_name(hf_key)
    if name is None:
        raise KeyError(f"unexpected parameter {hf_key}")
    return name


def build_think_adapter(
    model: AudioFlamingo3ForConditionalGeneration, out_dir: Path, preset: Preset, seed: int
) -> None:
    """A thinking-mode adapter shaped like AF3's `think/` folder: a PEFT LoRA (rank 8,
    alpha 16) on every linear layer of the decoder, none on the encoder or adaptor, and a
    `non_lora_trainables.bin` holding a retrained adaptor. The LoRA B matrices are random
    (PEFT starts them at zero), so the adapter changes the model's answers."""
    from peft import LoraConfig, get_peft_model

    generator = torch.Generator().manual_seed(seed + 1)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * preset.init_range)
    peft_model.save_pretrained(out_dir)
    (out_dir / "README.md").unlink()  # PEFT's blank model card

    projector = {
        f"base_model.model.{name}": torch.randn(param.shape, generator=generator)
        * preset.init_range
        for name, param in model.named_parameters()
        if name.startswith("model.multi_modal_projector.")
    }
    torch.save(projector, out_dir / "non_lora_trainables.bin")


def build_checkpoint(
    out_dir: Path, preset_name: str = "tiny", seed: int = 0, think: bool = False
) -> Path:
    preset = PRESETS[preset_name]
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    config = build_config(preset, tokenizer)

    torch.manual_seed(seed)
    model = AudioFlamingo3ForConditionalGeneration(config).eval()
    state = {official_key(k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)

    save_processor(tokenizer, CHAT_TEMPLATE, out_dir)
    if think:
        build_think_adapter(model, out_dir / "think", preset, seed)
    (out_dir / "AF3_TINY_CHECKPOINT.json").write_text(
        json.dumps({"preset": preset_name, "seed": seed, "think": think, "random_weights": True})
        + "\n"
    )
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--think", action="store_true", help="add a thinking-mode adapter in think/ (needs peft)"
    )
    parser.add_argument(
        "--layout",
        choices=["hf", "original"],
        default="hf",
        help="hf: nvidia/audio-flamingo-3-hf; original: NVIDIA's llava-style llm/, "
        "sound_tower/, sound_mm_projector/ (think/ becomes stage35/)",
    )
    args = parser.parse_args()
    if args.layout == "hf":
        path = build_checkpoint(args.out_dir, args.preset, args.seed, args.think)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            hf_dir = build_checkpoint(Path(tmp), args.preset, args.seed, args.think)
            path = write_original_layout(hf_dir, args.out_dir)
    print(f"wrote random-weight AF3 checkpoint ({args.preset}, {args.layout} layout) to {path}")


if __name__ == "__main__":
    main()
