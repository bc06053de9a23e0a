"""What the server makes of a thinking adapter's files before the engine starts (af3-serve
refusing a bad one: tests/e2e/test_server_start.py)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from af3_model_executor.think_adapter import (
    THINK_PROJECTOR_FILE,
    ThinkAdapterError,
    prepare_think_adapter,
)

NON_LORA = "non_lora_trainables.bin"


@pytest.fixture
def think(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint's think/ that a test may change."""
    return Path(shutil.copytree(tiny_checkpoint / "think", tmp_path / "think"))


def base_tensor(checkpoint: Path, name: str) -> torch.Tensor:
    return load_file(checkpoint / "model.safetensors")[name]


def set_non_lora(think: Path, tensors: dict[str, torch.Tensor]) -> None:
    torch.save(tensors, think / NON_LORA)


def test_prepared_adapter_uses_official_names_and_the_retrained_adaptor(
    tiny_checkpoint: Path, think: Path, tmp_path: Path
) -> None:
    adapter = prepare_think_adapter(tiny_checkpoint, think, tmp_path / "out")
    lora = load_file(adapter.lora_dir / "adapter_model.safetensors")
    assert lora and all(k.startswith("base_model.model.language_model.model.") for k in lora)
    config = json.loads((adapter.lora_dir / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert adapter.rank == 8
    projector = load_file(adapter.projector)
    non_lora = torch.load(think / NON_LORA, weights_only=True)
    for key, tensor in non_lora.items():
        name = key.removeprefix("base_model.model.model.")
        assert torch.equal(projector[name], tensor)
        assert not torch.equal(tensor, base_tensor(tiny_checkpoint, name))


def test_non_lora_weights_equal_to_the_base_need_no_second_adaptor(
    tiny_checkpoint: Path, think: Path, tmp_path: Path
) -> None:
    name = "multi_modal_projector.linear_1.weight"
    set_non_lora(think, {f"base_model.model.model.{name}": base_tensor(tiny_checkpoint, name)})
    adapter = prepare_think_adapter(tiny_checkpoint, think, tmp_path / "out")
    assert adapter.projector is None and adapter.unchanged == 1
    assert not (tmp_path / "out" / THINK_PROJECTOR_FILE).exists()


def test_original_layout_names_are_understood(
    tiny_checkpoint: Path, think: Path, tmp_path: Path
) -> None:
    name = "multi_modal_projector.linear_2.bias"
    changed = base_tensor(tiny_checkpoint, name) + 1
    set_non_lora(think, {"base_model.model.sound_mm_projector.layers.2.bias": changed})
    adapter = prepare_think_adapter(tiny_checkpoint, think, tmp_path / "out")
    assert torch.equal(load_file(adapter.projector)[name], changed)


def test_a_changed_decoder_weight_is_refused_by_name(
    tiny_checkpoint: Path, think: Path, tmp_path: Path
) -> None:
    name = "language_model.model.norm.weight"
    set_non_lora(
        think, {"base_model.model.llm.model.norm.weight": base_tensor(tiny_checkpoint, name) * 2}
    )
    with pytest.raises(
        ThinkAdapterError, match=r"outside the adaptor.*language_model\.model\.norm"
    ):
        prepare_think_adapter(tiny_checkpoint, think, tmp_path / "out")


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"base_model.model.model.vision_tower.w": torch.zeros(1)}, "cannot tell which part"),
        (
            {"base_model.model.model.multi_modal_projector.linear_1.bias": torch.zeros(3)},
            r"shape \(3,\)",
        ),
    ],
)
def test_unknown_or_misshapen_non_lora_weights_are_refused(
    tiny_checkpoint: Path, think: Path, tmp_path: Path, tensors, message: str
) -> None:
    set_non_lora(think, tensors)
    with pytest.raises(ThinkAdapterError, match=message):
        prepare_think_adapter(tiny_checkpoint, think, tmp_path / "out")


def test_whole_retrained_modules_are_refused(
    tiny_checkpoint: Path, think: Path, tmp_path: Path
) -> None:
    config = json.loads((think / "adapter_config.json").read_text())
    config["modules_to_save"] = ["lm_head"]
    (think / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ThinkAdapterError, match="lm_head"):
        prepare_think_adapter(tiny_checkpoint, think, tmp_path / "out")


def test_a_prepared_adapter_is_reused_until_a_source_file_changes(
    tiny_checkpoint: Path, think: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = prepare_think_adapter(tiny_checkpoint, think, out)
    lora_file = first.lora_dir / "adapter_model.safetensors"
    built = lora_file.stat()

    # Unchanged sources: the same folder, not written again (the same file, same mtime).
    assert prepare_think_adapter(tiny_checkpoint, think, out) == first
    assert (lora_file.stat().st_ino, lora_file.stat().st_mtime_ns) == (
        built.st_ino,
        built.st_mtime_ns,
    )

    # A source file touched (same bytes, new mtime): prepared again, with the same result.
    source = think / "adapter_model.safetensors"
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert prepare_think_adapter(tiny_checkpoint, think, out) == first
    assert lora_file.stat().st_ino != built.st_ino
    assert [p.name for p in tmp_path.iterdir() if p.name != "think"] == ["out"]

    # Another base checkpoint: prepared again, and what it finds reflects the new base.
    base = tmp_path / "base"
    shutil.copytree(tiny_checkpoint, base, ignore=shutil.ignore_patterns("think"))
    non_lora = torch.load(think / NON_LORA, weights_only=True)
    with_think_adaptor = load_file(base / "model.safetensors")
    for key, tensor in non_lora.items():
        with_think_adaptor[key.removeprefix("base_model.model.model.")] = tensor
    save_file(with_think_adaptor, base / "model.safetensors")
    again = prepare_think_adapter(base, think, out)
    assert again.projector is None and again.unchanged == len(non_lora)
