"""vLLM's engine with our model class: its configuration from the settings and the prepared
model files, and its start."""

import dataclasses
from pathlib import Path
from typing import Any, get_args

from vllm.config import VllmConfig
from vllm.config.lora import MaxLoRARanks
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.engine.protocol import EngineClient
from vllm.platforms import current_platform
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM

from af3_model_executor import HF_OVERRIDES
from af3_model_executor.constants import MAX_AUDIOS_PER_PROMPT
from af3_model_executor.think_adapter import THINK_PROJECTOR_CONFIG_KEY
from af3_serve.config import DEFAULT_CACHE_DIR, ServerConfig, SettingsError
from af3_serve.model_files import ModelFiles, resolve_model_files

USAGE = UsageContext.OPENAI_API_SERVER


def model_engine_args(files: ModelFiles, args: AsyncEngineArgs | None = None) -> dict[str, Any]:
    """Our architecture, and vLLM's LoRA sized for the thinking adapter with its retrained
    adaptor (if any). LoRA settings a user gave in `args` are kept when they fit."""
    overrides = {**((args.hf_overrides if args else None) or {}), **HF_OVERRIDES}
    if files.think is None:
        return {"hf_overrides": overrides}
    if files.think.projector is not None:
        overrides[THINK_PROJECTOR_CONFIG_KEY] = str(files.think.projector)
    ranks = [r for r in get_args(MaxLoRARanks) if r >= files.think.rank]
    if not ranks:
        raise SettingsError(f"the thinking adapter's rank {files.think.rank} is above vLLM's limit")
    rank = ranks[0]
    if args is not None and args.max_lora_rank != AsyncEngineArgs.max_lora_rank:
        if args.max_lora_rank < files.think.rank:
            raise SettingsError(
                f"--max-lora-rank {args.max_lora_rank} is below the thinking adapter's rank "
                f"{files.think.rank}"
            )
        rank = args.max_lora_rank
    # vLLM 0.32's CPU LoRA ops pick the adapter slot by index and give requests without a
    # LoRA index -1, i.e. the last slot: in a batch that mixes base and think requests the
    # base ones would get the adapter. A second slot, never filled (zeros), keeps them exact
    # (tested: base and think requests in one batch equal transformers).
    max_loras = 2 if current_platform.is_cpu() else 1
    if args is not None and args.max_loras != AsyncEngineArgs.max_loras:
        max_loras = max(max_loras, args.max_loras)
    return {
        "hf_overrides": overrides,
        "enable_lora": True,
        "max_loras": max_loras,
        "max_lora_rank": rank,
    }


def engine_kwargs(
    files: ModelFiles,
    args: AsyncEngineArgs | None = None,
    max_audio_seconds: float | None = None,
    max_audios: int = MAX_AUDIOS_PER_PROMPT,
) -> dict[str, Any]:
    """What our model needs of vLLM's engine, for the server, af3-infer, the tests' offline
    engines and the benchmarks alike (`LLM(**kwargs)`, `EngineArgs(**kwargs)`): the prepared
    files, our architecture (and the thinking LoRA), the audios per prompt, and the sizes for
    the longest audio served (default: the checkpoint's limit), as `AudioSpec.engine_sizes`
    gives them. `args`: the user's engine flags, whose LoRA settings are kept when they fit."""
    audio = files.audio.limited(max_audio_seconds)
    sizes = audio.engine_sizes(files.decoder_positions)
    return {
        "model": files.model_dir,
        **model_engine_args(files, args),
        # The API refuses more than `max_audios` audios; a realtime conversation sends its
        # long turns cut at their 30-s windows (`AudioSpec.window_cuts`), so that their
        # finished windows are prefilled while the turn is spoken. The engine's count is
        # the clips'. It sizes no memory: vLLM's profile is bounded by the encoder budget.
        "limit_mm_per_prompt": {"audio": max_audios * audio.max_clips},
        "max_model_len": sizes["max_model_len"],
        "max_num_batched_tokens": sizes["max_num_batched_tokens"],
    }


def offline_engine_kwargs(checkpoint: str | Path, **overrides: Any) -> dict[str, Any]:
    """`engine_kwargs` of a local checkpoint without its thinking adapter, eager and seeded,
    for the offline engines of the tests and benchmarks; `overrides` win
    (`hf_overrides={}` runs vLLM's built-in model on the same sizes)."""
    files = resolve_model_files(str(checkpoint), "none", DEFAULT_CACHE_DIR)
    return engine_kwargs(files) | {"enforce_eager": True, "seed": 0} | overrides


def engine_args(config: ServerConfig, files: ModelFiles) -> AsyncEngineArgs:
    """The user's engine flags with what our model needs and, where the user set none, the
    sizes for the longest audio served."""
    args = config.engine_args
    limit = config.audio_seconds_limit(files.audio.max_audio_seconds)
    ours = engine_kwargs(files, args, limit, config.max_audios_per_request)
    return dataclasses.replace(
        args,
        **ours
        | {
            "max_model_len": args.max_model_len or ours["max_model_len"],
            "max_num_batched_tokens": args.max_num_batched_tokens or ours["max_num_batched_tokens"],
        },
        served_model_name=[config.served_model_name],
        disable_log_stats=False,
    )


def build_vllm_config(config: ServerConfig, files: ModelFiles) -> VllmConfig:
    """Validated by vLLM here, before the server starts, so a bad flag is one clear line."""
    vllm_config = engine_args(config, files).create_engine_config(USAGE)
    # vLLM sizes the encoder cache to one batch of tokens (~one longest audio), so a second
    # long audio cannot start its prefill until the first has finished; hold several.
    limit = config.audio_seconds_limit(files.audio.max_audio_seconds)
    cache_tokens = (
        config.encoder_cache_tokens
        or (
            files.audio.limited(limit).engine_sizes(files.decoder_positions)["encoder_cache_tokens"]
        )
    )
    scheduler = vllm_config.scheduler_config
    scheduler.encoder_cache_size = max(scheduler.encoder_cache_size, cache_tokens)
    return vllm_config


def start_engine(vllm_config: VllmConfig) -> EngineClient:
    return AsyncLLM.from_vllm_config(vllm_config, usage_context=USAGE, disable_log_stats=False)
