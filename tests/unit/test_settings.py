"""af3-serve's flags: ours declared once, every engine flag taken from vLLM and reaching the
engine's configuration, and flags we cannot serve refused with one line. No engine boots
(af3-serve --help=all, a process: tests/e2e/test_server_start.py)."""

from pathlib import Path

import pytest

from af3_serve import cli
from af3_serve.config import REFUSED_ENGINE_FLAGS, SettingsError, parse_args
from af3_serve.engine import build_vllm_config
from af3_serve.model_files import resolve_model_files


@pytest.fixture
def vllm_config(tiny_checkpoint: Path, tmp_path: Path):
    def build(*flags: str):
        config = parse_args(["--model", str(tiny_checkpoint), "--cache-dir", str(tmp_path), *flags])
        files = resolve_model_files(config.model, config.think_adapter, config.cache_dir)
        return build_vllm_config(config, files)

    return build


def test_af3_defaults_for_long_audio(vllm_config) -> None:
    config = vllm_config("--dtype", "float32")
    assert config.scheduler_config.max_num_batched_tokens == 16384  # a 10-min clip, one step
    assert config.model_config.max_model_len == 32768
    assert config.cache_config.enable_prefix_caching
    assert config.scheduler_config.encoder_cache_size >= 4 * 15000
    assert config.model_config.architectures == ["AF3ServeForConditionalGeneration"]
    # 8 audios, each of up to 20 windows: a realtime conversation sends clips (engine.py).
    assert config.model_config.multimodal_config.limit_per_prompt["audio"].count == 8 * 20


def test_fp8_weights_and_kv_cache_reach_the_engine(vllm_config) -> None:
    config = vllm_config("--quantization", "fp8", "--kv-cache-dtype", "fp8", "--dtype", "bfloat16")
    assert config.model_config.quantization == "fp8"
    assert config.cache_config.cache_dtype == "fp8"


def test_parallelism_and_scheduler_flags_reach_the_engine(vllm_config) -> None:
    config = vllm_config(
        "--data-parallel-size", "2", "--max-num-seqs", "7", "--seed", "3", "--dtype", "float32"
    )
    assert config.parallel_config.data_parallel_size == 2
    assert config.scheduler_config.max_num_seqs == 7
    assert config.model_config.seed == 3
    assert vllm_config("--pipeline-parallel-size", "2").parallel_config.pipeline_parallel_size == 2


def test_our_flags_and_the_engine_limit_agree(vllm_config) -> None:
    config = vllm_config("--max-audios-per-request", "3", "--dtype", "float32")
    assert config.model_config.multimodal_config.limit_per_prompt["audio"].count == 3 * 20
    limited = vllm_config("--max-audios-per-request", "3", "--max-audio-seconds", "60")
    assert limited.model_config.multimodal_config.limit_per_prompt["audio"].count == 3 * 2


def test_a_lora_rank_below_the_thinking_adapters_is_refused(vllm_config) -> None:
    with pytest.raises(SettingsError, match="below the thinking adapter's rank 8"):
        vllm_config("--max-lora-rank", "1")


@pytest.mark.parametrize(
    "flags",
    [
        ["--limit-mm-per-prompt", '{"audio": 3}'],
        ["--model-impl", "transformers"],
        ["--runner", "pooling"],
        ["--disable-log-stats"],
        ["--hf-overrides", '{"architectures": ["AudioFlamingo3ForConditionalGeneration"]}'],
        ["--served-model-name", "a", "b"],
    ],
)
def test_flags_that_would_replace_our_model_are_refused(flags: list[str]) -> None:
    with pytest.raises(SettingsError):
        parse_args(flags)


def test_every_refusal_names_its_flag() -> None:
    for dest in REFUSED_ENGINE_FLAGS:
        flag = "--" + dest.replace("_", "-")
        value = ["--limit-mm-per-prompt", '{"audio": 3}'] if dest == "limit_mm_per_prompt" else []
        argv = value or ([flag] if dest in {"disable_log_stats", "skip_tokenizer_init"} else [])
        if not argv:
            continue
        with pytest.raises(SettingsError, match=flag):
            parse_args(argv)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # The CPU build refuses fp8 weights in float32: vLLM's own check, one line.
        (
            ["--quantization", "fp8", "--dtype", "float32"],
            "af3-serve: error: vLLM refused the engine settings: torch.float32 is not "
            "supported for quantization method fp8",
        ),
        (["--model-impl", "transformers"], "af3-serve: error: --model-impl is not accepted"),
    ],
)
def test_refusals_at_start_are_one_line(
    tiny_checkpoint: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    argv = ["--model", str(tiny_checkpoint), "--cache-dir", str(tmp_path), *flags]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    text = str(exit_.value.code)
    assert text.startswith(message) and "\n" not in text and "Traceback" not in text


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("nvidia/audio-flamingo-3-hf", "audio-flamingo-3"),
        ("nvidia/music-flamingo-2601-hf", "music-flamingo-2601"),
        ("nvidia/audio-flamingo-next-think-hf", "audio-flamingo-next-think"),
        ("/models/af3-chat/", "af3-chat"),  # a local folder, as typed
        ("/hub/models--nvidia--audio-flamingo-next-hf/snapshots/0a1b2c", "audio-flamingo-next"),
        ("hf", "hf"),
    ],
)
def test_a_checkpoint_is_served_under_its_own_name(model: str, name: str) -> None:
    """Without --served-model-name, /v1/models names the checkpoint (not always AF3)."""
    assert parse_args(["--model", model]).served_model_name == name
    named = parse_args(["--model", model, "--served-model-name", "mine"])
    assert (named.served_model_name, named.think_name) == ("mine", "mine-think")


def test_a_relative_folder_is_served_under_its_own_name(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "music-flamingo-hf"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert parse_args(["--model", "."]).served_model_name == "music-flamingo"
