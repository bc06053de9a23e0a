"""Structured outputs: `response_format` and vLLM's `structured_outputs` become vLLM's
`StructuredOutputsParams` (vLLM's own mapping), decoded by the engine's backend
(`--structured-outputs-config`: xgrammar, guidance, outlines, or vLLM's "auto" choice).

The sampling parameters are checked here with vLLM's own `SamplingParams.verify`, the check
the engine's input processor runs, so a schema, regex or grammar the backend cannot compile
is a 400 naming the field before the request is admitted (no audio decoded, no stream
started), never an engine failure."""

from vllm import SamplingParams
from vllm.engine.protocol import EngineClient
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest as VllmChatRequest,
)
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import StructuredOutputsParams

from af3_serve.chat.vllm_view import vllm_error


def structured_outputs(request: VllmChatRequest) -> StructuredOutputsParams | None:
    """The constraint: vLLM's mapping of response_format over structured_outputs (after
    a tool parser's `adjust_request`, which may have set it from the tools)."""
    return request.extract_structured_outputs()


def constraint_param(request: VllmChatRequest, from_tools: bool) -> str:
    """The field a refused constraint came from, for the 400's `param`."""
    if from_tools:
        return "tools"
    if request.response_format is not None and request.response_format.type != "text":
        return "response_format"
    return "structured_outputs"


def verify(params: SamplingParams, engine: EngineClient, param: str) -> None:
    """vLLM's own check of the parameters (logit_bias, allowed_token_ids, logprobs and the
    structured-output constraint compiled by the configured backend), as a 400."""
    config = engine.vllm_config
    try:
        params.verify(
            config.model_config,
            config.speculative_config,
            config.structured_outputs_config,
            engine.renderer.get_tokenizer(),
        )
    except VLLMValidationError as exc:
        raise vllm_error(exc, param) from exc
    except (ValueError, TypeError, RuntimeError) as exc:  # a backend's own compile error
        raise vllm_error(VLLMValidationError(f"Invalid {param}: {exc}"), param) from exc
