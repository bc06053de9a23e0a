"""POST /v1/chat/completions: the body parsed, the request served along `serving.py`'s path."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from vllm import SamplingParams

from af3_serve.admission import Ticket
from af3_serve.chat.protocol import ChatCompletion, ChatCompletionRequest
from af3_serve.chat.serving import ChatAnswer
from af3_serve.edge.auth import require_api_key
from af3_serve.inputs.prompts import to_conversation
from af3_serve.runtime import Runtime, get_runtime
from af3_serve.sampling import check_stream_options, sampling_params
from af3_serve.serving import ServedRequest

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
) -> ChatCompletion | StreamingResponse:
    think = runtime.models.is_think(body.model, body.thinking)
    check_stream_options(body)
    conversation, refs = to_conversation(body.messages)
    served = ServedRequest(runtime, request, "chat")

    async def prepare(ticket: Ticket) -> tuple[Any, SamplingParams]:
        audios = await runtime.inputs.load_audios(refs, ticket)
        engine_input = await runtime.inputs.render(conversation, audios, think)
        prompt_len = len(engine_input["prompt_token_ids"])
        return engine_input, sampling_params(body, prompt_len, runtime.inputs.max_model_len)

    engine_input, params = await served.prepare(prepare)
    answer = ChatAnswer(served, body, engine_input, params, think, runtime.audio_token_id)
    if body.stream:
        return served.stream(answer.chunks())
    return await served.answer(answer.completion())
