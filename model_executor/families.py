"""The checkpoint families we serve, told apart by config.json's `model_type`.

- audioflamingo3: `nvidia/audio-flamingo-3-hf` and `nvidia/music-flamingo-hf` (AF3's
  architecture, other weights and prompts);
- musicflamingo: `nvidia/music-flamingo-2601-hf`, `nvidia/audio-flamingo-next-hf` and
  `nvidia/audio-flamingo-next-think-hf`: AF3's parts plus `<|sound_bos|>`/`<|sound_eos|>`
  around each audio's placeholders and rotary time embeddings on the encoder output
  (transformers' `MusicFlamingoForConditionalGeneration`). Their audio limits (1200 s,
  1800 s) come from each checkpoint's processor config.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json's model_type
    processor_class: str  # transformers' processor, as processor_config.json names it
    max_audio_seconds: int  # the processor's default when processor_config.json sets none
    audio_span_tokens: bool  # <|sound_bos|> and <|sound_eos|> around each audio
    rotary_time: bool  # rotary time embeddings (RoTE) after the encoder's LayerNorm
    checkpoints: tuple[str, ...]


AF3 = Family(
    "audioflamingo3",
    "AudioFlamingo3Processor",
    600,
    audio_span_tokens=False,
    rotary_time=False,
    checkpoints=("nvidia/audio-flamingo-3-hf", "nvidia/music-flamingo-hf"),
)
MUSIC_FLAMINGO = Family(
    "musicflamingo",
    "MusicFlamingoProcessor",
    1200,
    audio_span_tokens=True,
    rotary_time=True,
    checkpoints=(
        "nvidia/music-flamingo-2601-hf",
        "nvidia/audio-flamingo-next-hf",
        "nvidia/audio-flamingo-next-think-hf",
    ),
)
FAMILIES = {family.model_type: family for family in (AF3, MUSIC_FLAMINGO)}


class UnsupportedCheckpointError(ValueError):
    """A checkpoint of an architecture we do not serve; the message names it."""


def family_of(config: Any, source: str = "the checkpoint") -> Family:
    """The family of a config (transformers' config object or config.json as a dict)."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    family = FAMILIES.get(get("model_type"))
    if family is None:
        architectures = ", ".join(get("architectures") or ()) or "no architectures"
        served = "; ".join(
            f"{f.model_type} ({', '.join(f.checkpoints)})" for f in FAMILIES.values()
        )
        raise UnsupportedCheckpointError(
            f"{source} is model_type {get('model_type')!r} ({architectures}), which af3-serve "
            f"does not serve; it serves {served}"
        )
    return family


def checkpoint_family(model_dir: str | Path) -> Family:
    """The family of a checkpoint folder in the HF layout, from its config.json."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedCheckpointError(f"{path} cannot be read as JSON: {exc}") from exc
    return family_of(config, str(path))


def family_of_processor(processor_class: str | None) -> Family:
    """The family whose processor a processor_config.json names (AF3's when it names none)."""
    return next((f for f in FAMILIES.values() if f.processor_class == processor_class), AF3)
