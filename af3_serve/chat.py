"""POST /v1/chat/completions."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.logprobs import SampleLogprobs
from vllm.outputs import CompletionOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.exceptions import EngineDeadError

from af3_serve import metrics
from af3_serve.admission import Ticket
from af3_serve.cancellation import engine_errors, until_disconnect
from af3_serve.dependencies import (
    CHAT_REQUEST_OPENAPI,
    chat_request_body,
    get_runtime,
    require_api_key,
)
from af3_serve.errors import APIError
from af3_serve.prompts import to_conversation
from af3_serve.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    PromptTokensDetails,
    ResponseMessage,
    TokenLogprob,
    TopLogprob,
    Usage,
    completion_id,
)
from af3_serve.runtime import Runtime

router = APIRouter()
T = TypeVar("T")


def sampling_params(
    body: ChatCompletionRequest, prompt_len: int, max_model_len: int, stream: bool
) -> SamplingParams:
    room = max_model_len - prompt_len
    max_tokens = body.max_completion_tokens or body.max_tokens or room
    if max_tokens > room:
        raise APIError(
            400,
            f"max_tokens is {max_tokens}, but only {room} tokens are left in "
            f"the model's context after the {prompt_len}-token prompt.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
    try:
        return SamplingParams(
            n=body.n,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            max_tokens=max_tokens,
            stop=body.stop,
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            repetition_penalty=body.repetition_penalty,
            min_tokens=min(body.min_tokens, max_tokens),
            ignore_eos=body.ignore_eos,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        )
    except (ValueError, VLLMValidationError) as exc:
        raise APIError(400, str(exc), code="invalid_value") from exc


def _logprobs(output: CompletionOutput, top: int) -> ChoiceLogprobs | None:
    if output.logprobs is None:
        return None
    entries = []
    sample: SampleLogprobs = output.logprobs
    for token_id, candidates in zip(output.token_ids, sample, strict=True):
        chosen = candidates[token_id]
        ranked = sorted(candidates.values(), key=lambda lp: lp.rank or 0)[:top]
        entries.append(
            TokenLogprob(
                token=chosen.decoded_token or "",
                logprob=chosen.logprob,
                bytes=list((chosen.decoded_token or "").encode()),
                top_logprobs=[
                    TopLogprob(
                        token=lp.decoded_token or "",
                        logprob=lp.logprob,
                        bytes=list((lp.decoded_token or "").encode()),
                    )
                    for lp in ranked
                ],
            )
        )
    return ChoiceLogprobs(content=entries)


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
    arrival = time.perf_counter()
    think = runtime.check_model(body.model, body.thinking)
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options needs stream: true.", param="stream_options")
    conversation, refs = to_conversation(body.messages)

    ticket = runtime.admit(request.state.client)
    try:

        async def prepare() -> Any:
            audios = await runtime.load_audios(refs, ticket)
            return await runtime.render(conversation, audios, think)

        # A client that leaves while its audio is fetched or decoded stops the work here.
        engine_input = await until_disconnect(request, prepare(), "chat_prepare")
        prompt_ids = engine_input["prompt_token_ids"]
        params = sampling_params(body, len(prompt_ids), runtime.max_model_len, body.stream)
    except BaseException:
        runtime.admission.release(ticket)
        raise

    audio_tokens = sum(1 for t in prompt_ids if t == runtime.audio_token_id)
    request_id = completion_id()
    top = body.top_logprobs or 0

    def usage(completion_tokens: int, cached_tokens: int) -> Usage:
        return Usage(
            prompt_tokens=len(prompt_ids),
            completion_tokens=completion_tokens,
            total_tokens=len(prompt_ids) + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(
                audio_tokens=audio_tokens, cached_tokens=cached_tokens
            ),
        )

    if body.stream:
        return StreamingResponse(
            _stream(
                runtime, ticket, body, engine_input, params, request_id, arrival, usage, top, think
            ),
            media_type="text/event-stream",
        )

    async def complete() -> ChatCompletion:
        final = None
        first = True
        async for out in runtime.generate(engine_input, params, request_id, think):
            if first:
                metrics.TIME_TO_FIRST_TOKEN.observe(time.perf_counter() - arrival)
                first = False
            final = out
        assert final is not None
        choices = [
            Choice(
                index=o.index,
                message=ResponseMessage(content=o.text),
                finish_reason=o.finish_reason,
                logprobs=_logprobs(o, top),
            )
            for o in final.outputs
        ]
        return ChatCompletion(
            id=request_id,
            model=body.model,
            choices=choices,
            usage=usage(sum(len(o.token_ids) for o in final.outputs), final.num_cached_tokens or 0),
        )

    try:
        result = await until_disconnect(request, engine_errors(complete()), "chat")
        return result
    finally:
        runtime.admission.release(ticket)


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


async def _stream(
    runtime: Runtime,
    ticket: Ticket,
    body: ChatCompletionRequest,
    engine_input: Any,
    params: SamplingParams,
    request_id: str,
    arrival: float,
    usage: Any,
    top: int,
    think: bool,
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format; the admission taken by the handler is
    released when the stream ends, however it ends."""
    created = int(time.time())

    def chunk(choices: list[ChunkChoice], usage_: Usage | None = None) -> str:
        return _sse(
            ChatCompletionChunk(
                id=request_id, created=created, model=body.model, choices=choices, usage=usage_
            ).model_dump_json(exclude_none=True)
        )

    completion_tokens = 0
    cached_tokens = 0
    try:
        yield chunk(
            [ChunkChoice(index=i, delta=Delta(role="assistant", content="")) for i in range(body.n)]
        )
        first = True
        async for out in runtime.generate(engine_input, params, request_id, think):
            if first:
                metrics.TIME_TO_FIRST_TOKEN.observe(time.perf_counter() - arrival)
                first = False
            cached_tokens = out.num_cached_tokens or cached_tokens
            for o in out.outputs:
                completion_tokens += len(o.token_ids)
                if o.text or o.finish_reason:
                    yield chunk(
                        [
                            ChunkChoice(
                                index=o.index,
                                delta=Delta(content=o.text or None),
                                finish_reason=o.finish_reason,
                                logprobs=_logprobs(o, top),
                            )
                        ]
                    )
        if body.stream_options and body.stream_options.include_usage:
            yield chunk([], usage(completion_tokens, cached_tokens))
    except (asyncio.CancelledError, GeneratorExit):
        metrics.CLIENT_DISCONNECTS.labels("chat_stream").inc()
        raise
    except EngineDeadError:
        error = APIError(503, "The engine stopped while serving this request.", code="engine_dead")
        yield _sse(error.body().model_dump_json())
    finally:
        runtime.admission.release(ticket)
    yield _sse("[DONE]")
