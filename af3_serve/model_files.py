"""Which files the engine loads: the checkpoint (converted once if it is in AF3's original
llava layout), what it is (its family, audio limit and decoder positions; an architecture
we do not serve stops here) and the thinking-mode adapter prepared for vLLM's LoRA."""

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from af3_model_executor.audio_spec import AudioSpec
from af3_model_executor.constants import DEFAULT_DECODER_POSITIONS, TINY_CHECKPOINT_MARKER
from af3_model_executor.families import (
    AF3,
    Family,
    UnsupportedCheckpointError,
    checkpoint_family,
)
from af3_model_executor.original_layout import ConversionError, resolve_model_dir
from af3_model_executor.think_adapter import (
    ThinkAdapter,
    ThinkAdapterError,
    prepare_think_adapter,
)

logger = logging.getLogger("af3_serve")

# Where each layout keeps the thinking adapter: the HF port's think/, the original's stage35/.
_THINK_SUBFOLDERS = ("think", "stage35")


class ModelFilesError(ValueError):
    """The checkpoint or the thinking adapter cannot be served; the message says why."""


@dataclass(frozen=True)
class ModelFiles:
    model_dir: str  # a local folder in the HF layout
    think: ThinkAdapter | None
    family: Family = AF3
    audio: AudioSpec = field(default_factory=AudioSpec)  # its processor config and limit

    @property
    def is_tiny(self) -> bool:
        """A random-weight checkpoint from af3-tiny-checkpoint (its answers are noise)."""
        return (Path(self.model_dir) / TINY_CHECKPOINT_MARKER).exists()

    decoder_positions: int = DEFAULT_DECODER_POSITIONS  # max_position_embeddings


def _local_folder(model: str) -> Path:
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    # What vLLM would download anyway; the thinking adapter's think/ comes with it.
    return Path(snapshot_download(model))


def resolve_model_files(model: str, think_adapter: str, cache_dir: Path) -> ModelFiles:
    """`think_adapter`: a folder, "auto" (the checkpoint's think/ or stage35/, if any) or
    "none"."""
    try:
        return _resolve(model, think_adapter, cache_dir)
    except (ConversionError, ThinkAdapterError, UnsupportedCheckpointError, OSError) as exc:
        raise ModelFilesError(str(exc)) from exc  # OSError: hub downloads, missing files


def _checkpoint(model_dir: Path) -> dict:
    """What the checkpoint is: its family (refusing what we do not serve), its audio front
    end and limit (processor_config.json), its decoder's positions."""
    family = checkpoint_family(model_dir)
    text_config = json.loads((model_dir / "config.json").read_text()).get("text_config", {})
    positions = text_config.get("max_position_embeddings", DEFAULT_DECODER_POSITIONS)
    return {
        "family": family,
        "audio": AudioSpec.from_pretrained(str(model_dir)),
        "decoder_positions": positions,
    }


def _resolve(model: str, think_adapter: str, cache_dir: Path) -> ModelFiles:
    model_dir = Path(resolve_model_dir(str(_local_folder(model)), cache_dir / "converted"))
    checkpoint = _checkpoint(model_dir)
    if think_adapter == "none":
        return ModelFiles(str(model_dir), None, **checkpoint)
    if think_adapter == "auto":
        think_dir = next(
            (model_dir / s for s in _THINK_SUBFOLDERS if (model_dir / s).is_dir()), None
        )
        if think_dir is None:
            logger.info("no thinking adapter in %s; serving the base model alone", model_dir)
            return ModelFiles(str(model_dir), None, **checkpoint)
    else:
        think_dir = Path(think_adapter)
        if not think_dir.is_dir():
            raise ModelFilesError(f"the thinking adapter {think_dir} is not a folder")
    key = hashlib.sha256(str(think_dir.resolve()).encode()).hexdigest()[:16]
    think = prepare_think_adapter(model_dir, think_dir, cache_dir / "think" / key)
    return ModelFiles(str(model_dir), think, **checkpoint)
