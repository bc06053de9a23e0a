"""AF3's thinking mode (stage 3.5), made servable next to the base model.

The release ships it as a PEFT LoRA on the decoder plus `non_lora_trainables.bin`, the
other weights that stage trained. vLLM's LoRA applies the adapter per request; the
non-LoRA weights are checked tensor by tensor against the base checkpoint:
- equal to the base: nothing to do;
- the adaptor (`multi_modal_projector.*`): the model holds a second adaptor that
  think requests use (chosen per audio through the processor kwarg below);
- anything else that differs (encoder, decoder, embeddings): refused with the names,
  since one engine cannot serve two versions of those to different requests.
Key names are accepted in any of the namings `weight_names` knows: the HF layout,
transformers' in-memory names, or the original llava layout (`llm.`, `sound_tower.`,
`sound_mm_projector.layers.{0,2}`). What is prepared is kept in the server's cache and
prepared again only when a file it is built from changes (`prepared_cache`).
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from vllm.lora.request import LoRARequest

from af3_model_executor import prepared_cache
from af3_model_executor.weight_names import PEFT_PREFIX, official_name

logger = logging.getLogger("af3_serve.think")

# AF3's release switches thinking on with this sentence after the user's question.
THINK_SUFFIX = "Please think and reason about the input audio before you respond."
# The processor kwarg that sends an audio through the thinking-mode adaptor.
AUDIO_VARIANT_KWARG = "af3_audio_variant"
AUDIO_VARIANTS = ("base", "think")
# The prepared adaptor file, and the config key that tells the model where it is.
THINK_PROJECTOR_FILE = "think_projector.safetensors"
THINK_PROJECTOR_CONFIG_KEY = "af3_think_projector"

# The prepared folder's record of its sources; a new version prepares folders again.
MARKER = "AF3_THINK_ADAPTER.json"
FORMAT_VERSION = 1

_LORA_PARTS = (".lora_A.", ".lora_B.")


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


def _official_name(key: str) -> str:
    """A weight's name in the HF file layout, from any of the namings AF3 uses."""
    name = official_name(key)
    if name is None:
        raise ThinkAdapterError(f"cannot tell which part of AF3 the weight '{key}' belongs to")
    return name


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
        name = _official_name(key)
        if not name.startswith("language_model."):
            raise ThinkAdapterError(
                f"the adapter changes '{name}': LoRA outside the decoder is not supported"
            )
        weights[PEFT_PREFIX + name] = tensor.contiguous()
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
            name = _official_name(key)
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
    """The base checkpoint's tensors by official name (whichever naming its files use),
    read one at a time."""

    def __init__(self, base_dir: Path) -> None:
        files = sorted(base_dir.glob("*.safetensors"))
        if not files:
            raise ThinkAdapterError(f"{base_dir} holds no safetensors weights")
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where = {
            official_name(key) or key: (handle, key)
            for handle in self._handles
            for key in handle.keys()
        }

    def __enter__(self) -> "_BaseWeights":
        return self

    def __exit__(self, *exc: object) -> None:
        self._handles.clear()
        self._where.clear()

    def names(self, prefix: str) -> list[str]:
        return [name for name in self._where if name.startswith(prefix)]

    def get(self, name: str) -> torch.Tensor | None:
        if name not in self._where:
            return None
        handle, key = self._where[name]
        return handle.get_tensor(key)


def _prepare(base_dir: Path, think_dir: Path, out_dir: Path) -> dict:
    lora_dir = out_dir / "lora"
    lora_dir.mkdir()
    rank = _prepare_lora(think_dir, lora_dir)
    projector, unchanged = _prepare_non_lora(think_dir, base_dir, out_dir)
    return {"rank": rank, "projector": projector is not None, "unchanged": unchanged}


def prepare_think_adapter(base_dir: Path, think_dir: Path, out_dir: Path) -> ThinkAdapter:
    """Check the adapter in `think_dir` against the base model and write what the engine
    loads to `out_dir`, unless `out_dir` was prepared from the same files before (the
    base checkpoint's weights and everything in `think_dir`, sizes and mtimes)."""
    base_dir, think_dir, out_dir = Path(base_dir), Path(think_dir), Path(out_dir)
    if not (think_dir / "adapter_config.json").is_file():
        raise ThinkAdapterError(f"{think_dir} holds no adapter_config.json")
    key = prepared_cache.source_key(
        FORMAT_VERSION,
        {
            "base": prepared_cache.Source(base_dir, "*.safetensors"),
            "adapter": prepared_cache.Source(think_dir),
        },
    )
    record, built = prepared_cache.prepare(
        out_dir, MARKER, key, lambda folder: _prepare(base_dir, think_dir, folder)
    )
    logger.info(
        "thinking adapter %s (%s): LoRA rank %d; non-LoRA weights: %d equal to the base, %s",
        think_dir,
        "prepared now" if built else f"prepared earlier in {out_dir}",
        record["rank"],
        record["unchanged"],
        "a retrained adaptor served to think requests"
        if record["projector"]
        else "no adaptor change",
    )
    projector = out_dir / THINK_PROJECTOR_FILE if record["projector"] else None
    return ThinkAdapter(out_dir / "lora", record["rank"], projector, record["unchanged"])
