"""vLLM's engine with our model class: its configuration from the settings and the prepared
model files, and its start."""

import dataclasses
from typing import Any, get_args

from vllm.config import VllmConfig
from vllm.config.lora import MaxLoRARanks
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.engine.protocol import EngineClient
from vllm.platforms import current_platform
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM

from af3_model_executor import HF_OVERRIDES
from af3_model_executor.think_adapter import THINK_PROJECTOR_CONFIG_KEY
from af3_serve.config import ServerConfig, SettingsError, audio_length_defaults
from af3_serve.model_files import ModelFiles

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


def engine_defaults(files: ModelFiles, max_audio_seconds: float | None = None) -> dict[str, int]:
    """The settings that follow the longest audio served (default: the checkpoint's limit):
    context, batched tokens and encoder cache, as `config.audio_length_defaults` sizes them
    for its placeholders."""
    seconds = max_audio_seconds or files.audio.max_audio_seconds
    tokens = dataclasses.replace(files.audio, max_audio_seconds=seconds).max_audio_tokens
    if files.family.audio_span_tokens:
        tokens += 2  # <|sound_bos|> and <|sound_eos|>
    return audio_length_defaults(tokens, files.decoder_positions)


def engine_args(config: ServerConfig, files: ModelFiles) -> AsyncEngineArgs:
    """The user's engine flags, pointed at the prepared files, with what our model needs
    and, where the user set none, the defaults for the longest audio."""
    args = config.engine_args
    defaults = engine_defaults(files, config.audio_seconds_limit(files.audio.max_audio_seconds))
    return dataclasses.replace(
        args,
        model=files.model_dir,
        served_model_name=[config.served_model_name],
        **model_engine_args(files, args),
        limit_mm_per_prompt={"audio": config.max_audios_per_request},
        disable_log_stats=False,
        max_model_len=args.max_model_len or defaults["max_model_len"],
        max_num_batched_tokens=args.max_num_batched_tokens or defaults["max_num_batched_tokens"],
    )


def build_vllm_config(config: ServerConfig, files: ModelFiles) -> VllmConfig:
    """Validated by vLLM here, before the server starts, so a bad flag is one clear line."""
    vllm_config = engine_args(config, files).create_engine_config(USAGE)
    # vLLM sizes the encoder cache to one batch of tokens (~one longest audio), so a second
    # long audio cannot start its prefill until the first has finished; hold several.
    limit = config.audio_seconds_limit(files.audio.max_audio_seconds)
    cache_tokens = (
        config.encoder_cache_tokens or engine_defaults(files, limit)["encoder_cache_tokens"]
    )
    scheduler = vllm_config.scheduler_config
    scheduler.encoder_cache_size = max(scheduler.encoder_cache_size, cache_tokens)
    return vllm_config


def start_engine(vllm_config: VllmConfig) -> EngineClient:
    return AsyncLLM.from_vllm_config(vllm_config, usage_context=USAGE, disable_log_stats=False)
