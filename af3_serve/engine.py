"""Starting vLLM's AsyncLLM with our model class and settings made for long audio."""

from typing import Any, get_args

from vllm.config.lora import MaxLoRARanks
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.platforms import current_platform
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM

from af3_model_executor import HF_OVERRIDES
from af3_model_executor.think_adapter import THINK_PROJECTOR_CONFIG_KEY
from af3_serve.config import ServerConfig
from af3_serve.model_files import ModelFiles


def model_engine_args(files: ModelFiles) -> dict[str, Any]:
    """vLLM's LoRA, sized for the thinking adapter, and its retrained adaptor (if any)."""
    if files.think is None:
        return {"hf_overrides": HF_OVERRIDES}
    overrides = dict(HF_OVERRIDES)
    if files.think.projector is not None:
        overrides[THINK_PROJECTOR_CONFIG_KEY] = str(files.think.projector)
    ranks = [r for r in get_args(MaxLoRARanks) if r >= files.think.rank]
    if not ranks:
        raise ValueError(f"the thinking adapter's rank {files.think.rank} is above vLLM's limit")
    return {
        "hf_overrides": overrides,
        "enable_lora": True,
        # vLLM 0.32's CPU LoRA ops pick the adapter slot by index and give requests without
        # a LoRA index -1, i.e. the last slot: in a batch that mixes base and think requests
        # the base ones would get the adapter. A second slot, never filled (zeros), keeps
        # them exact (tested: base and think requests in one batch equal transformers).
        "max_loras": 2 if current_platform.is_cpu() else 1,
        "max_lora_rank": ranks[0],
    }


def engine_args(config: ServerConfig, files: ModelFiles) -> AsyncEngineArgs:
    e = config.engine
    return AsyncEngineArgs(
        model=files.model_dir,
        served_model_name=[config.served_model_name],
        **model_engine_args(files),
        max_model_len=e.max_model_len,
        max_num_batched_tokens=e.max_num_batched_tokens,
        max_num_seqs=e.max_num_seqs,
        gpu_memory_utilization=e.gpu_memory_utilization,
        tensor_parallel_size=e.tensor_parallel_size,
        dtype=e.dtype,
        enforce_eager=e.enforce_eager,
        seed=e.seed,
        limit_mm_per_prompt={"audio": config.max_audios_per_request},
        # AF3-Chat sends the same long audio again every turn: the cached prefix
        # (audio included) is what keeps later turns from re-encoding and re-prefilling it.
        enable_prefix_caching=True,
        disable_log_stats=False,
    )


def start_engine(config: ServerConfig, files: ModelFiles) -> AsyncLLM:
    usage = UsageContext.OPENAI_API_SERVER
    vllm_config = engine_args(config, files).create_engine_config(usage)
    # vLLM sizes the encoder cache to one batch of tokens (~one 10-min audio), so a second
    # long audio cannot start its prefill until the first has finished; hold several.
    scheduler = vllm_config.scheduler_config
    scheduler.encoder_cache_size = max(
        scheduler.encoder_cache_size, config.engine.encoder_cache_tokens
    )
    return AsyncLLM.from_vllm_config(vllm_config, usage_context=usage, disable_log_stats=False)
