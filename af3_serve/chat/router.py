"""POST /v1/chat/completions: the body parsed, the request served along `serving.py`'s path."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from vllm.exceptions import VLLMValidationError

from af3_serve.chat.protocol import ChatCompletion, ChatCompletionRequest
from af3_serve.chat.serving import prepare_chat
from af3_serve.chat.setup import ChatSetup, get_chat_setup
from af3_serve.chat.vllm_view import vllm_error
from af3_serve.edge.auth import require_api_key
from af3_serve.runtime import Runtime, get_runtime

router = APIRouter()

# The body's schema for the OpenAPI page, as the body is parsed by hand below.
CHAT_REQUEST_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema()}},
    }
}


async def chat_request_body(request: Request) -> ChatCompletionRequest:
    """The body, parsed by pydantic straight from bytes: its Rust JSON parser takes a fraction
    of the API-process CPU that json.loads plus validation spend on a 25-MB audio body.
    Runs after the key check, so a request without a valid key is never parsed."""
    try:
        return ChatCompletionRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
    except VLLMValidationError as exc:  # raised by StructuredOutputsParams itself
        raise vllm_error(exc, "structured_outputs") from exc


@router.post(
    "/v1/chat/completions",
    dependencies=[Depends(require_api_key)],
    response_model=None,
    openapi_extra=CHAT_REQUEST_OPENAPI,
)
async def chat_completions(
    body: Annotated[ChatCompletionRequest, Depends(chat_request_body)],
    request: Request,
    runtime: Annotated[Runtime, Depends(get_runtime)],
    setup: Annotated[ChatSetup, Depends(get_chat_setup)],
) -> ChatCompletion | StreamingResponse:
    answer = await prepare_chat(body, request, runtime, setup)
    if body.stream:
        return answer.served.stream(answer.chunks())
    return await answer.served.answer(answer.completion())
