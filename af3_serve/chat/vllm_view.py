"""Our chat body as vLLM's own `ChatCompletionRequest`, without the messages: vLLM's request
checks (response_format, structured_outputs, tools and tool_choice, logprobs, generation
prompt), its tool parsers' `adjust_request` and its structured-output mapping all take that
type, so they run on it unchanged instead of being rewritten here."""

from pydantic import ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest as VllmChatRequest,
)
from vllm.exceptions import VLLMValidationError

from af3_serve.chat.protocol import ChatCompletionRequest
from af3_serve.edge.errors import APIError

# The fields both schemas have and vLLM reads for what we hand it (max_tokens is ours:
# vLLM's copy only warns that it is deprecated).
SHARED_FIELDS = frozenset(VllmChatRequest.model_fields) & frozenset(
    ChatCompletionRequest.model_fields
) - {"messages", "max_tokens", "max_completion_tokens"}


def vllm_error(exc: VLLMValidationError, param: str | None = None) -> APIError:
    """vLLM's refusal as our 400, naming the parameter it names (or `param`)."""
    message = exc.args[0] if exc.args else str(exc)
    return APIError(400, message, param=exc.parameter or param, code="invalid_value")


def vllm_view(body: ChatCompletionRequest) -> VllmChatRequest:
    """vLLM's request for `body`'s fields (its validators run: a 400 for what vLLM refuses)."""
    data = body.model_dump(include=SHARED_FIELDS, exclude_unset=True, by_alias=True)
    try:
        return VllmChatRequest.model_validate({**data, "messages": []})
    except VLLMValidationError as exc:
        raise vllm_error(exc) from exc
    except ValidationError as exc:  # what our own schema let through and vLLM's does not
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        raise APIError(400, first["msg"], param=param, code="invalid_value") from exc
