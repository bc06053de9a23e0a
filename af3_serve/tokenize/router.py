"""POST /tokenize and /detokenize: the prompt as the engine would see it. Chat messages go
through the chat endpoint's own steps (audio fetched, decoded and admitted, the template
rendered, our processor expanding each audio), so a count is exactly what a chat answer's
usage would say; nothing reaches the engine."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from af3_serve.admission import Ticket
from af3_serve.edge.auth import require_api_key
from af3_serve.edge.errors import APIError
from af3_serve.inputs.prompts import to_conversation
from af3_serve.runtime import Runtime, get_runtime
from af3_serve.serving import ServedRequest
from af3_serve.tokenize.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter(dependencies=[Depends(require_api_key)])


async def _chat_tokens(body: TokenizeChatRequest, request: Request, runtime: Runtime) -> list[int]:
    if body.add_generation_prompt and body.continue_final_message:
        raise APIError(
            400,
            "add_generation_prompt and continue_final_message cannot both be true.",
            param="continue_final_message",
        )
    think = runtime.models.is_think(body.model or runtime.models.base, body.thinking)
    conversation, refs = to_conversation(body.messages, None, runtime.inputs.default_system)
    served = ServedRequest(runtime, request, "tokenize")

    async def prepare(ticket: Ticket) -> list[int]:
        template = {
            "add_generation_prompt": body.add_generation_prompt,
            "continue_final_message": body.continue_final_message,
            "template_kwargs": body.chat_template_kwargs,
        }
        engine_input = await runtime.inputs.chat_prompt(
            conversation, refs, ticket, think, **template
        )
        return list(engine_input["prompt_token_ids"])

    try:
        return await served.prepare(prepare)
    finally:
        served.release()


@router.post("/tokenize")
async def tokenize(
    body: TokenizeRequest,
    request: Request,
    runtime: Annotated[Runtime, Depends(get_runtime)],
) -> TokenizeResponse:
    tokenizer = runtime.inputs.tokenizer
    if isinstance(body, TokenizeChatRequest):
        tokens = await _chat_tokens(body, request, runtime)
    else:
        runtime.models.is_think(body.model or runtime.models.base)  # a model we serve
        tokens = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    return TokenizeResponse(
        count=len(tokens),
        max_model_len=runtime.models.max_model_len,
        tokens=tokens,
        token_strs=tokenizer.convert_ids_to_tokens(tokens) if body.return_token_strs else None,
    )


@router.post("/detokenize")
async def detokenize(
    body: DetokenizeRequest, runtime: Annotated[Runtime, Depends(get_runtime)]
) -> DetokenizeResponse:
    runtime.models.is_think(body.model or runtime.models.base)
    runtime.inputs.check_token_ids(body.tokens, "tokens")
    return DetokenizeResponse(prompt=runtime.inputs.tokenizer.decode(body.tokens))
