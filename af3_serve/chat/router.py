"""POST /v1/chat/completions: the body parsed, the request served along `serving.py`'s path."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError

from af3_serve.admission import Ticket
from af3_serve.chat import structured
from af3_serve.chat.logprobs import LogprobFormat
from af3_serve.chat.protocol import ChatCompletion, ChatCompletionRequest
from af3_serve.chat.serving import ChatAnswer, sampling_params
from af3_serve.chat.setup import ChatSetup, get_chat_setup
from af3_serve.chat.vllm_view import vllm_error, vllm_view
from af3_serve.edge.auth import require_api_key
from af3_serve.edge.errors import APIError
from af3_serve.inputs.prompts import last_message_text, to_conversation
from af3_serve.runtime import Runtime, get_runtime
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
    think = runtime.models.is_think(body.model, body.thinking)
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options needs stream: true.", param="stream_options")
    view = vllm_view(body)  # vLLM's checks of the fields it shares with us
    from_tools = view.tools is not None and view.tool_choice not in (None, "none", "auto")
    view = setup.tools.check(view)
    tools = setup.tools.tool_dicts(view)
    conversation, refs = to_conversation(body.messages, tools, runtime.inputs.default_system)
    served = ServedRequest(runtime, request, "chat")

    async def prepare(ticket: Ticket) -> tuple[Any, SamplingParams]:
        audios = await runtime.inputs.load_audios(refs, ticket)
        engine_input = await runtime.inputs.render(
            conversation,
            audios,
            think,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
            template_kwargs=body.chat_template_kwargs,
        )
        prompt_len = len(engine_input["prompt_token_ids"])
        params = sampling_params(body, view, prompt_len, runtime.inputs.max_model_len)
        structured.verify(params, runtime.engine, structured.constraint_param(view, from_tools))
        return engine_input, params

    engine_input, params = await served.prepare(prepare)
    # As vLLM: the answer continues the last turn when it is the answer's role.
    role = "assistant" if body.add_generation_prompt else conversation[-1]["role"]
    echo = body.echo and conversation[-1]["role"] == role
    as_token_ids = body.return_tokens_as_token_ids
    if as_token_ids is None:
        as_token_ids = runtime.config.return_tokens_as_token_ids
    answer = ChatAnswer(
        served,
        body,
        view,
        engine_input,
        params,
        think,
        runtime.audio_token_id,
        LogprobFormat(setup.token_bytes, body.top_logprobs or 0, as_token_ids),
        setup.tools,
        echo=last_message_text(conversation) if echo else "",
        role=role,
    )
    if body.stream:
        return served.stream(answer.chunks())
    return await served.answer(answer.completion())
