"""Starting vLLM's AsyncLLM with our model class and settings made for long audio."""

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM

from af3_model_executor import HF_OVERRIDES
from af3_serve.config import ServerConfig


def engine_args(config: ServerConfig) -> AsyncEngineArgs:
    e = config.engine
    return AsyncEngineArgs(
        model=config.model,
        served_model_name=[config.served_model_name],
        hf_overrides=HF_OVERRIDES,
        max_model_len=e.max_model_len,
        max_num_batched_tokens=e.max_num_batched_tokens,
        max_num_seqs=e.max_num_seqs,
        gpu_memory_utilization=e.gpu_memory_utilization,
        tensor_parallel_size=e.tensor_parallel_size,
        dtype=e.dtype,
        enforce_eager=e.enforce_eager,
        seed=e.seed,
        limit_mm_per_prompt={"audio": config.max_audios_per_request},
        disable_log_stats=False,
    )


def start_engine(config: ServerConfig) -> AsyncLLM:
    usage = UsageContext.OPENAI_API_SERVER
    vllm_config = engine_args(config).create_engine_config(usage)
    # vLLM sizes the encoder cache to one batch of tokens (~one 10-min audio), so a second
    # long audio cannot start its prefill until the first has finished; hold several.
    scheduler = vllm_config.scheduler_config
    scheduler.encoder_cache_size = max(
        scheduler.encoder_cache_size, config.engine.encoder_cache_tokens
    )
    return AsyncLLM.from_vllm_config(vllm_config, usage_context=usage, disable_log_stats=False)
