"""af3-serve as a process that stops before any engine: its --help, and a start it refuses."""

import shutil
import subprocess
import sys
from pathlib import Path

import torch

from af3_serve.config import build_parser

NON_LORA = "non_lora_trainables.bin"


def test_help_groups_our_flags_and_the_engines() -> None:
    """As `vllm serve --help`: the groups first (the bare --help lists them), all on request."""
    groups = build_parser().format_help()
    for group in ("af3-serve", "ModelConfig", "ParallelConfig", "CacheConfig", "LoRAConfig"):
        assert f"\n  {group} " in groups, group
    # A process of its own: vLLM's help texts need --help in argv when it is imported.
    result = subprocess.run(
        [sys.executable, "-m", "af3_serve.cli", "--help=all"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    ours, _, engine = result.stdout.partition("\nModelConfig:")
    assert "\naf3-serve:" in ours and "--max-audio-seconds" in ours
    assert "Longest audio accepted, per audio" in ours  # ServerSettings' docstrings
    for flag in (
        "--quantization",
        "--kv-cache-dtype",
        "--data-parallel-size",
        "--pipeline-parallel-size",
        "--distributed-executor-backend",
        "--speculative-config",
        "--compilation-config",
        "--max-lora-rank",
        "--enable-chunked-prefill",
    ):
        assert flag in engine, flag


def test_the_server_refuses_to_start_with_a_bad_adapter(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A think/ adapter whose non-LoRA weights fit nowhere in the model: one line, no
    traceback (what is refused, and why: tests/unit/test_think_adapter.py)."""
    think = Path(shutil.copytree(tiny_checkpoint / "think", tmp_path / "think"))
    torch.save({"base_model.model.model.vision_tower.w": torch.zeros(1)}, think / NON_LORA)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "af3_serve.cli",
            "--model",
            str(tiny_checkpoint),
            "--think-adapter",
            str(think),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "af3-serve: error:" in result.stderr and "vision_tower" in result.stderr
    assert "Traceback" not in result.stderr
