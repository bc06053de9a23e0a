"""Our model in vLLM's offline engine, as the engine-tier tests (and the `llm` fixture) run it."""

from pathlib import Path


def offline_engine(checkpoint: Path) -> "object":
    """Our model (never vLLM's built-in) in vLLM's offline engine with the server's sizes for
    the checkpoint's longest audio, greedy-exact in float32, a whole prompt prefilled in one
    step."""
    from vllm import LLM

    from af3_serve.engine import offline_engine_kwargs

    kwargs = offline_engine_kwargs(checkpoint, dtype="float32")
    return LLM(**kwargs | {"max_num_batched_tokens": kwargs["max_model_len"]})
