"""Our vLLM implementation of Audio Flamingo 3, loaded as a vLLM general plugin."""

# A name of our own, so a process that lacks this plugin fails loudly instead of
# falling back to vLLM's built-in AF3 class; engines ask for it via hf_overrides.
ARCHITECTURE = "AF3ServeForConditionalGeneration"
HF_OVERRIDES = {"architectures": [ARCHITECTURE]}


def register() -> None:
    """vLLM runs this in every process it starts; registering twice is harmless."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(
            ARCHITECTURE, "af3_model_executor.audioflamingo3:AF3ServeForConditionalGeneration"
        )
