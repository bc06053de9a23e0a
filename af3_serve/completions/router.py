"""POST /v1/completions: text prompts (or token ids) served along `serving.py`'s path, as
`vllm serve` serves them; audio belongs to chat, the Responses API and speech."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from vllm import SamplingParams

from af3_serve.admission import Ticket
from af3_serve.completions.protocol import Completion, CompletionRequest
from af3_serve.completions.serving import CompletionAnswer
from af3_serve.edge.auth import require_api_key
from af3_serve.edge.errors import APIError
from af3_serve.runtime import Runtime, get_runtime
from af3_serve.sampling import check_stream_options, max_tokens_for, sampling_params
from af3_serve.serving import ServedRequest

router = APIRouter()


@router.post("/v1/completions", dependencies=[Depends(require_api_key)], response_model=None)
async def completions(
    body: CompletionRequest,
    request: Request,
    runtime: Annotated[Runtime, Depends(get_runtime)],
) -> Completion | StreamingResponse:
    think = runtime.models.is_think(body.model, body.thinking)
    check_stream_options(body)
    if body.echo and body.logprobs is not None:
        raise APIError(
            400,
            "echo with logprobs needs the prompt's logprobs, which this endpoint does not "
            "return; ask for one or the other.",
            param="echo",
        )
    prompts = body.prompts()
    if not prompts:
        raise APIError(400, "No prompt was given.", param="prompt")
    served = ServedRequest(runtime, request, "completions")

    async def prepare(ticket: Ticket) -> tuple[list[dict[str, Any]], SamplingParams]:
        single = len(prompts) == 1
        inputs = [
            await runtime.inputs.text_prompt(p, "prompt" if single else f"prompt[{i}]")
            for i, p in enumerate(prompts)
        ]
        longest = max(len(i["prompt_token_ids"]) for i in inputs)
        max_tokens = max_tokens_for(body, longest, runtime.inputs.max_model_len)
        return inputs, sampling_params(body, max_tokens)

    inputs, params = await served.prepare(prepare)
    answer = CompletionAnswer(served, body, inputs, params, think, runtime.inputs.tokenizer)
    if body.stream:
        return served.stream(answer.chunks())
    return await served.answer(answer.completion())
