"""AF3's thinking mode (stage 3.5), made servable next to the base model.

The release ships it as a PEFT LoRA on the decoder plus `non_lora_trainables.bin`, the
other weights that stage trained. vLLM's LoRA applies the adapter per request; the
non-LoRA weights are checked tensor by tensor against the base checkpoint:
- equal to the base: nothing to do;
- the adaptor (`multi_modal_projector.*`): the model holds a second adaptor that
  think requests use (chosen per audio through the processor kwarg below);
- anything else that differs (encoder, decoder, embeddings): refused with the names,
  since one engine cannot serve two versions of those to different requests.
Key names are accepted in the HF layout, transformers' in-memory names, or the
original llava layout (`llm.`, `sound_tower.`, `sound_mm_projector.layers.{0,2}`).
"""

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from vllm.lora.request import LoRARequest

logger = logging.getLogger("af3_serve.think")

# AF3's release switches thinking on with this sentence after the user's question.
THINK_SUFFIX = "Please think and reason about the input audio before you respond."
# The processor kwarg that sends an audio through the thinking-mode adaptor.
AUDIO_VARIANT_KWARG = "af3_audio_variant"
AUDIO_VARIANTS = ("base", "think")
# The prepared adaptor file, and the config key that tells the model where it is.
THINK_PROJECTOR_FILE = "think_projector.safetensors"
THINK_PROJECTOR_CONFIG_KEY = "af3_think_projector"

_PEFT_PREFIX = "base_model.model."
_LORA_PARTS = (".lora_A.", ".lora_B.")
# Every naming of a module the checkpoints use -> the official HF file names.
_RENAMES = (
    ("model.language_model.", "language_model.model."),
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
    ("llm.", "language_model."),
    ("sound_tower.", "audio_tower."),
    ("sound_mm_projector.layers.0.", "multi_modal_projector.linear_1."),
    ("sound_mm_projector.layers.2.", "multi_modal_projector.linear_2."),
)
_OFFICIAL_PREFIXES = ("language_model.", "audio_tower.", "multi_modal_projector.")


class ThinkAdapterError(ValueError):
    """The adapter cannot be served as it is; the message says why."""


@dataclass(frozen=True)
class ThinkAdapter:
    lora_dir: Path  # a PEFT folder with official module names, for vLLM's LoRA
    rank: int
    projector: Path | None  # the thinking-mode adaptor, when it differs from the base one
    unchanged: int  # non-LoRA tensors equal to the base checkpoint

    def lora_request(self, name: str) -> LoRARequest:
        return LoRARequest(name, 1, str(self.lora_dir))

    def mm_processor_kwargs(self) -> dict[str, str] | None:
        """What a think request's prompt carries so its audios use the retrained adaptor."""
        return {AUDIO_VARIANT_KWARG: "think"} if self.projector is not None else None


def official_name(key: str) -> str:
    """A weight's name in the HF file layout, from any of the namings AF3 uses."""
    name = key.removeprefix(_PEFT_PREFIX)
    if name.startswith(("model.llm.", "model.sound_")):  # the llava model's own prefix
        name = name.removeprefix("model.")
    if name.startswith(_OFFICIAL_PREFIXES):
        return name
    for old, new in _RENAMES:
        if name.startswith(old):
            return new + name[len(old) :]
    raise ThinkAdapterError(f"cannot tell which part of AF3 the weight '{key}' belongs to")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _adapter_weights(think_dir: Path) -> dict[str, torch.Tensor]:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (think_dir / name).is_file():
            return _load_tensors(think_dir / name)
    raise ThinkAdapterError(f"{think_dir} holds no adapter_model.safetensors or adapter_model.bin")


def _prepare_lora(think_dir: Path, out_dir: Path) -> int:
    """Rewrite the LoRA with official module names; return its rank."""
    config = json.loads((think_dir / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise ThinkAdapterError("the thinking adapter is not a plain LoRA adapter")
    if config.get("modules_to_save"):
        raise ThinkAdapterError(
            f"the thinking adapter retrains whole modules ({config['modules_to_save']}); "
            "vLLM's LoRA cannot serve them next to the base model"
        )
    weights: dict[str, torch.Tensor] = {}
    modules: set[str] = set()
    for key, tensor in _adapter_weights(think_dir).items():
        if not any(part in key for part in _LORA_PARTS):
            raise ThinkAdapterError(f"the adapter holds '{key}', which is not a LoRA weight")
        name = official_name(key)
        if not name.startswith("language_model."):
            raise ThinkAdapterError(
                f"the adapter changes '{name}': LoRA outside the decoder is not supported"
            )
        weights[_PEFT_PREFIX + name] = tensor.contiguous()
        modules.add(name.split(".lora_")[0].rsplit(".", 1)[-1])
    if not weights:
        raise ThinkAdapterError(f"the adapter in {think_dir} holds no LoRA weights")
    config["target_modules"] = sorted(modules)
    config["base_model_name_or_path"] = None
    save_file(weights, out_dir / "adapter_model.safetensors")
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return int(config["r"])


def _prepare_non_lora(think_dir: Path, base_dir: Path, out_dir: Path) -> tuple[Path | None, int]:
    """Check every non-LoRA tensor against the base checkpoint; keep a changed adaptor."""
    path = think_dir / "non_lora_trainables.bin"
    if not path.is_file():
        return None, 0
    changed_projector = False
    projector: dict[str, torch.Tensor] = {}
    refused: list[str] = []
    unchanged = 0
    with _BaseWeights(base_dir) as base:
        for name in base.names("multi_modal_projector."):
            projector[name] = base.get(name)
        for key, tensor in _load_tensors(path).items():
            name = official_name(key)
            reference = base.get(name)
            if reference is None:
                raise ThinkAdapterError(f"non_lora_trainables.bin holds '{key}', unknown to AF3")
            if reference.shape != tensor.shape:
                raise ThinkAdapterError(
                    f"non_lora_trainables.bin: '{key}' has shape {tuple(tensor.shape)}, "
                    f"the model's '{name}' has {tuple(reference.shape)}"
                )
            if torch.equal(reference, tensor.to(reference.dtype)):
                unchanged += 1
            elif name.startswith("multi_modal_projector."):
                projector[name] = tensor.to(reference.dtype).contiguous()
                changed_projector = True
            else:
                refused.append(name)
    if refused:
        raise ThinkAdapterError(
            f"non_lora_trainables.bin changes {len(refused)} weights outside the adaptor "
            f"(e.g. {', '.join(refused[:3])}); one engine cannot serve two versions of them"
        )
    if not changed_projector:
        return None, unchanged
    # The whole adaptor: the retrained tensors and the base ones it kept.
    save_file(projector, out_dir / THINK_PROJECTOR_FILE)
    return out_dir / THINK_PROJECTOR_FILE, unchanged


class _BaseWeights:
    """The base checkpoint's tensors by official name, read one at a time."""

    def __init__(self, base_dir: Path) -> None:
        files = sorted(base_dir.glob("*.safetensors"))
        if not files:
            raise ThinkAdapterError(f"{base_dir} holds no safetensors weights")
        self._handles = [safe_open(str(f), framework="pt") for f in files]

    def __enter__(self) -> "_BaseWeights":
        return self

    def __exit__(self, *exc: object) -> None:
        self._handles.clear()

    def names(self, prefix: str) -> list[str]:
        return [n for handle in self._handles for n in handle.keys() if n.startswith(prefix)]

    def get(self, name: str) -> torch.Tensor | None:
        for handle in self._handles:
            if name in handle.keys():
                return handle.get_tensor(name)
        return None


def prepare_think_adapter(base_dir: Path, think_dir: Path, out_dir: Path) -> ThinkAdapter:
    """Check the adapter in `think_dir` against the base model and write what the engine
    loads to `out_dir` (replaced if it exists)."""
    if not (think_dir / "adapter_config.json").is_file():
        raise ThinkAdapterError(f"{think_dir} holds no adapter_config.json")
    shutil.rmtree(out_dir, ignore_errors=True)
    lora_dir = out_dir / "lora"
    lora_dir.mkdir(parents=True)
    rank = _prepare_lora(think_dir, lora_dir)
    projector, unchanged = _prepare_non_lora(think_dir, base_dir, out_dir)
    logger.info(
        "thinking adapter %s: LoRA rank %d; non-LoRA weights: %d equal to the base, %s",
        think_dir,
        rank,
        unchanged,
        "a retrained adaptor served to think requests" if projector else "no adaptor change",
    )
    return ThinkAdapter(lora_dir, rank, projector, unchanged)
