"""Build a deterministic random-weight checkpoint of a family we serve, in its official layout.

The real weights (`nvidia/audio-flamingo-3-hf`, `nvidia/music-flamingo-2601-hf`,
`nvidia/audio-flamingo-next-hf`, ...) cannot be downloaded where our tests run, so tests
and CPU benchmarks use small checkpoints with the same file layout, config and processor
classes (transformers' own), tokenizer special tokens, feature-extractor settings, audio
limit and chat template. `--family`: `af3` (AudioFlamingo3, 600 s; `--think` adds the
think/ LoRA adapter), `musicflamingo` (MusicFlamingo as `music-flamingo-2601-hf`,
1200 s), `af-next` (MusicFlamingo as `audio-flamingo-next-hf`, 1800 s, a 131,072-position
decoder; `--think` writes the `-think-hf` release, a checkpoint of its own).
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
    MusicFlamingoConfig,
    MusicFlamingoForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from af3_model_executor.audio_spec import AudioSpec
from af3_model_executor.constants import (
    AUDIO_BOS_TOKEN,
    AUDIO_EOS_TOKEN,
    AUDIO_TOKEN,
    DEFAULT_DECODER_POSITIONS,
    TINY_CHECKPOINT_MARKER,
)
from af3_model_executor.families import AF3, MUSIC_FLAMINGO, Family
from af3_model_executor.processor_files import (
    AUDIO_PLACEHOLDER,
    DEFAULT_SYSTEM_PROMPT,
    chatml_template,
    save_processor,
)
from af3_model_executor.testing.original_layout_writer import write_original_layout
from af3_model_executor.weight_names import official_name

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", AUDIO_TOKEN]
# A user turn's audios (one `<sound>` each, at its start), then its text, as the real
# templates render them.
_USER_CONTENT = (
    "{% for part in message['content'] if part['type'] == 'audio' %}"
    + AUDIO_PLACEHOLDER
    + "{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
)
CHAT_TEMPLATE = chatml_template(_USER_CONTENT)


@dataclass(frozen=True)
class Release:
    """What a family's published checkpoint has that the tiny one copies."""

    family: Family
    max_audio_seconds: int  # processor_config.json's max_audio_len
    decoder_positions: int
    decoder_rope_theta: float
    # The default system turn. AF-Next's real one is its own (not published where we can
    # read it); the tiny one only has to differ from AF3's, as the real one does.
    system_prompt: str
    think: str | None  # "adapter": think/ (AF3); "release": a -think-hf of its own


RELEASES = {
    "af3": Release(
        AF3, AF3.max_audio_seconds, DEFAULT_DECODER_POSITIONS, 1e6, DEFAULT_SYSTEM_PROMPT, "adapter"
    ),
    "musicflamingo": Release(
        MUSIC_FLAMINGO,
        MUSIC_FLAMINGO.max_audio_seconds,
        DEFAULT_DECODER_POSITIONS,
        1e6,
        DEFAULT_SYSTEM_PROMPT,
        None,
    ),
    "af-next": Release(
        MUSIC_FLAMINGO,
        1800,
        131072,
        1e7,
        "You are Audio Flamingo Next, a helpful assistant that listens to audio.",
        "release",
    ),
}

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
    # Full AF3 size (AF-Whisper encoder, Qwen2.5-7B decoder). benchmarks/gpu/checkpoint.py
    # writes it on a GPU machine: vocabulary padded to Qwen2.5's 151,936, 8.3B parameters,
    # 15.4 GiB in bf16, streamed; build_checkpoint would hold it in float32 twice over.
    "real": Preset(32, 1280, 20, 5120, 28, 3584, 28, 4, 18944, init_range=0.02),
}


def build_tokenizer(out_dir: Path, release: Release = RELEASES["af3"]) -> PreTrainedTokenizerFast:
    span = [AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN] if release.family.audio_span_tokens else []
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=SPECIAL_TOKENS + span,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_BPE_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>", AUDIO_TOKEN, *span],
    )
    fast.chat_template = chatml_template(_USER_CONTENT, release.system_prompt)
    fast.save_pretrained(out_dir)
    return fast


def build_config(
    preset: Preset, tokenizer: PreTrainedTokenizerFast, release: Release = RELEASES["af3"]
) -> AudioFlamingo3Config | MusicFlamingoConfig:
    vocab_size = len(tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    if release.family is AF3:
        config_class, extra = AudioFlamingo3Config, {}
    else:
        config_class = MusicFlamingoConfig
        extra = {
            "audio_bos_token_id": ids(AUDIO_BOS_TOKEN),
            "audio_eos_token_id": ids(AUDIO_EOS_TOKEN),
        }
    return config_class(
        audio_config={
            "model_type": "audioflamingo3_encoder",
            "num_mel_bins": AudioSpec().num_mel_bins,
            "num_hidden_layers": preset.encoder_layers,
            "hidden_size": preset.encoder_dim,
            "num_attention_heads": preset.encoder_heads,
            "intermediate_size": preset.encoder_ffn,
            "max_source_positions": AudioSpec().window_frames // 2,  # after the stride-2 conv
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
            "max_position_embeddings": release.decoder_positions,
            "rope_theta": release.decoder_rope_theta,
            "tie_word_embeddings": False,
            "initializer_range": preset.init_range,
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
        },
        audio_token_id=ids(AUDIO_TOKEN),
        architectures=[config_class.__name__.replace("Config", "ForConditionalGeneration")],
        **extra,
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
    out_dir: Path,
    preset_name: str = "tiny",
    seed: int = 0,
    think: bool = False,
    family: str = "af3",
    layout: str = "hf",
) -> Path:
    """`layout`: "hf", the hub's file names; "transformers", what transformers'
    `save_pretrained` writes (the decoder under `language_model.model.model.`)."""
    preset, release = PRESETS[preset_name], RELEASES[family]
    if think and release.think is None:
        raise ValueError(f"{family} has no thinking variant")
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir, release)
    config = build_config(preset, tokenizer, release)

    # The -think-hf release of AF-Next is a checkpoint of its own: other weights.
    torch.manual_seed(seed + 1 if think and release.think == "release" else seed)
    model_class = (
        AudioFlamingo3ForConditionalGeneration
        if release.family is AF3
        else MusicFlamingoForConditionalGeneration
    )
    model = model_class(config).eval()
    if layout == "transformers":
        model.save_pretrained(out_dir)
    else:
        state = {official_key(k): v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(out_dir)
        model.generation_config.save_pretrained(out_dir)

    save_processor(
        tokenizer, tokenizer.chat_template, out_dir, release.family, release.max_audio_seconds
    )
    if think and release.think == "adapter":
        build_think_adapter(model, out_dir / "think", preset, seed)
    description = {"preset": preset_name, "seed": seed, "think": think, "random_weights": True}
    description |= {"family": family, "layout": layout}
    (out_dir / TINY_CHECKPOINT_MARKER).write_text(json.dumps(description) + "\n")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--family", choices=list(RELEASES), default="af3")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--think",
        action="store_true",
        help="the thinking variant: af3's think/ adapter (needs peft), af-next's -think-hf",
    )
    parser.add_argument(
        "--layout",
        choices=["hf", "transformers", "original"],
        default="hf",
        help="hf: the hub's files (nvidia/audio-flamingo-3-hf); transformers: as "
        "save_pretrained writes them; original (af3 only): NVIDIA's llava-style llm/, "
        "sound_tower/, sound_mm_projector/ (think/ becomes stage35/)",
    )
    args = parser.parse_args()
    if args.layout == "original" and args.family != "af3":
        parser.error("--layout original exists for af3 only")
    if args.think and RELEASES[args.family].think is None:
        parser.error(f"{args.family} has no thinking variant")
    if args.layout != "original":
        path = build_checkpoint(
            args.out_dir, args.preset, args.seed, args.think, args.family, args.layout
        )
    else:
        with tempfile.TemporaryDirectory() as tmp:
            hf_dir = build_checkpoint(Path(tmp), args.preset, args.seed, args.think)
            path = write_original_layout(hf_dir, args.out_dir)
    print(
        f"wrote random-weight {args.family} checkpoint ({args.preset}, {args.layout} layout) "
        f"to {path}"
    )


if __name__ == "__main__":
    main()
