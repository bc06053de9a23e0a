"""A chat request's engine work turned into OpenAI's answer: one `chat.completion` or a
stream of `chat.completion.chunk`s."""

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from vllm import SamplingParams
from vllm.logprobs import SampleLogprobs
from vllm.outputs import CompletionOutput

from af3_serve.admission import Ticket
from af3_serve.chat.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    ResponseMessage,
    TokenLogprob,
    TopLogprob,
    completion_id,
)
from af3_serve.inputs.prompts import AudioRef, to_conversation
from af3_serve.protocol import PromptTokensDetails, Usage
from af3_serve.runtime import Runtime
from af3_serve.sampling import check_stream_options, sampling_params
from af3_serve.serving import ServedRequest


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


@dataclass
class ChatAnswer:
    """The engine request of one admitted chat request, answered whole or streamed."""

    served: ServedRequest
    body: ChatCompletionRequest
    engine_input: Any
    params: SamplingParams
    think: bool
    audio_token_id: int
    id: str = field(default_factory=completion_id)

    @property
    def prompt_ids(self) -> list[int]:
        return self.engine_input["prompt_token_ids"]

    @property
    def top(self) -> int:
        return self.body.top_logprobs or 0

    def _outputs(self) -> AsyncIterator[Any]:
        return self.served.generate(self.engine_input, self.params, self.id, self.think)

    def _usage(self, completion_tokens: int, cached_tokens: int) -> Usage:
        return Usage(
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=completion_tokens,
            total_tokens=len(self.prompt_ids) + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(
                audio_tokens=self.prompt_ids.count(self.audio_token_id),
                cached_tokens=cached_tokens,
            ),
        )

    async def completion(self) -> ChatCompletion:
        final = None
        async for out in self._outputs():
            final = out
        assert final is not None
        choices = [
            Choice(
                index=o.index,
                message=ResponseMessage(content=o.text),
                finish_reason=o.finish_reason,
                logprobs=_logprobs(o, self.top),
            )
            for o in final.outputs
        ]
        completion_tokens = sum(len(o.token_ids) for o in final.outputs)
        return ChatCompletion(
            id=self.id,
            model=self.body.model,
            choices=choices,
            usage=self._usage(completion_tokens, final.num_cached_tokens or 0),
        )

    async def chunks(self) -> AsyncIterator[str]:
        """OpenAI's chunk format, as JSON payloads for `ServedRequest.stream`."""
        created = int(time.time())

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            return ChatCompletionChunk(
                id=self.id, created=created, model=self.body.model, choices=choices, usage=usage
            ).model_dump_json(exclude_none=True)

        role = Delta(role="assistant", content="")
        yield chunk([ChunkChoice(index=i, delta=role) for i in range(self.body.n)])
        completion_tokens = cached_tokens = 0
        async for out in self._outputs():
            cached_tokens = out.num_cached_tokens or cached_tokens
            for o in out.outputs:
                completion_tokens += len(o.token_ids)
                if o.text or o.finish_reason:
                    delta = ChunkChoice(
                        index=o.index,
                        delta=Delta(content=o.text or None),
                        finish_reason=o.finish_reason,
                        logprobs=_logprobs(o, self.top),
                    )
                    yield chunk([delta])
        if self.body.stream_options and self.body.stream_options.include_usage:
            yield chunk([], self._usage(completion_tokens, cached_tokens))


async def chat_answer(
    body: ChatCompletionRequest,
    request: Request,
    runtime: Runtime,
    endpoint: str = "chat",
    audio_params: list[str] | None = None,
) -> ChatAnswer:
    """Admit a chat request and prepare its engine input (audio fetched and decoded, the
    template rendered, sampling checked against the context); `endpoint` labels its metrics
    and `audio_params` names each audio's place in the client's own request (the Responses
    API's `input[...]`), where it is not chat's `messages[...]`."""
    think = runtime.models.is_think(body.model, body.thinking)
    check_stream_options(body)
    conversation, refs = to_conversation(body.messages)
    if audio_params is not None:
        refs = [AudioRef(r.part, param) for r, param in zip(refs, audio_params, strict=True)]
    served = ServedRequest(runtime, request, endpoint)

    async def prepare(ticket: Ticket) -> tuple[Any, SamplingParams]:
        audios = await runtime.inputs.load_audios(refs, ticket)
        engine_input = await runtime.inputs.render(conversation, audios, think)
        prompt_len = len(engine_input["prompt_token_ids"])
        return engine_input, sampling_params(body, prompt_len, runtime.inputs.max_model_len)

    engine_input, params = await served.prepare(prepare)
    return ChatAnswer(served, body, engine_input, params, think, runtime.audio_token_id)
