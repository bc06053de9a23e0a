"""A chat request's engine work turned into OpenAI's answer: sampling parameters from the
body, then one `chat.completion` or a stream of `chat.completion.chunk`s."""

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from vllm import SamplingParams
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest as VllmChatRequest,
)
from vllm.entrypoints.serve.utils.api_utils import should_include_usage
from vllm.exceptions import VLLMValidationError
from vllm.outputs import CompletionOutput
from vllm.parser.abstract_parser import Parser
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from af3_serve.admission import Ticket
from af3_serve.chat import structured, tools
from af3_serve.chat.logprobs import LogprobFormat, prompt_logprobs
from af3_serve.chat.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    PromptTokensDetails,
    ResponseMessage,
    Usage,
    completion_id,
)
from af3_serve.chat.setup import ChatSetup
from af3_serve.chat.tools import ToolCalling
from af3_serve.chat.vllm_view import vllm_view
from af3_serve.edge.errors import APIError
from af3_serve.inputs.prompts import last_message_text, to_conversation
from af3_serve.runtime import Runtime
from af3_serve.serving import ServedRequest


def max_tokens_for(body: ChatCompletionRequest, prompt_len: int, max_model_len: int) -> int:
    """The answer's budget: what the body asks for, at most the context the prompt left."""
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
    return max_tokens


def sampling_params(
    body: ChatCompletionRequest,
    request: VllmChatRequest,
    max_tokens: int,
    constraint: StructuredOutputsParams | None,
) -> SamplingParams:
    """`request` is vLLM's view of `body` after any tool parser adjusted it (its
    skip_special_tokens); `constraint` its structured-output constraint."""
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
    try:
        return SamplingParams.from_optional(
            n=body.n,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            min_p=body.min_p,
            max_tokens=max_tokens,
            stop=body.stop,
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            repetition_penalty=body.repetition_penalty,
            min_tokens=min(body.min_tokens, max_tokens),
            ignore_eos=body.ignore_eos,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            prompt_logprobs=body.prompt_logprobs,
            logit_bias=body.logit_bias,
            allowed_token_ids=body.allowed_token_ids,
            bad_words=body.bad_words,
            skip_special_tokens=request.skip_special_tokens,
            structured_outputs=constraint,
            output_kind=RequestOutputKind.DELTA if body.stream else RequestOutputKind.FINAL_ONLY,
        )
    except VLLMValidationError as exc:
        raise APIError(400, exc.args[0], param=exc.parameter, code="invalid_value") from exc
    except (ValueError, TypeError) as exc:
        raise APIError(400, str(exc), code="invalid_value") from exc


@dataclass
class ChatAnswer:
    """The engine request of one admitted chat request, answered whole or streamed."""

    served: ServedRequest
    body: ChatCompletionRequest
    request: VllmChatRequest  # vLLM's view of the body: what its tool parsers read
    engine_input: Any
    params: SamplingParams
    think: bool
    audio_token_id: int
    logprobs: LogprobFormat
    tool_calling: ToolCalling
    echo: str = ""  # the text of the last message, put before the answer (`echo`)
    role: str = "assistant"
    id: str = field(default_factory=completion_id)

    @property
    def prompt_ids(self) -> list[int]:
        return self.engine_input["prompt_token_ids"]

    def _outputs(self) -> AsyncIterator[Any]:
        return self.served.generate(self.engine_input, self.params, self.id, self.think)

    def _parser(self) -> Parser | None:
        if self.request.tool_choice in (None, "none"):
            return None
        return self.tool_calling.new_parser(self.request)

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

    def _choice(self, o: CompletionOutput) -> Choice:
        content, calls = tools.parse_answer(self._parser(), o.text, o.token_ids, self.request)
        if self.echo:
            content = self.echo + (content or "")
        return Choice(
            index=o.index,
            message=ResponseMessage(role=self.role, content=content, tool_calls=calls or None),
            finish_reason=tools.finish_reason(self.request, bool(calls), o.finish_reason),
            logprobs=self.logprobs.choice(o),
        )

    async def completion(self) -> ChatCompletion:
        final = None
        async for out in self._outputs():
            final = out
        assert final is not None
        completion_tokens = sum(len(o.token_ids) for o in final.outputs)
        return ChatCompletion(
            id=self.id,
            model=self.body.model,
            choices=[self._choice(o) for o in final.outputs],
            usage=self._usage(completion_tokens, final.num_cached_tokens or 0),
            prompt_logprobs=prompt_logprobs(final.prompt_logprobs)
            if self.body.prompt_logprobs is not None
            else None,
        )

    async def chunks(self) -> AsyncIterator[str]:
        """OpenAI's chunk format, as JSON payloads for `ServedRequest.stream`."""
        created = int(time.time())
        # vLLM's rule: usage on every chunk needs include_usage too.
        include_usage, continuous = should_include_usage(self.body.stream_options, False)
        completion_tokens = cached_tokens = 0

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            if continuous and usage is None:
                usage = self._usage(completion_tokens, cached_tokens)
            return ChatCompletionChunk(
                id=self.id, created=created, model=self.body.model, choices=choices, usage=usage
            ).model_dump_json(exclude_none=True)

        n = self.body.n
        role = Delta(role=self.role, content="")
        yield chunk([ChunkChoice(index=i, delta=role) for i in range(n)])
        if self.echo:
            yield chunk([ChunkChoice(index=i, delta=Delta(content=self.echo)) for i in range(n)])
        parsers = [self._parser() for _ in range(n)]
        called = [False] * n
        async for out in self._outputs():
            cached_tokens = out.num_cached_tokens or cached_tokens
            for o in out.outputs:
                completion_tokens += len(o.token_ids)
                delta = Delta(content=o.text or None)
                if (parser := parsers[o.index]) is not None:
                    parsed = parser.parse_delta(
                        o.text,
                        list(o.token_ids),
                        self.request,
                        self.prompt_ids,
                        finished=o.finish_reason is not None,
                    )
                    delta = Delta(
                        content=parsed.content or None if parsed else None,
                        tool_calls=tools.delta_tool_calls(parsed, self.request) or None
                        if parsed
                        else None,
                    )
                    called[o.index] |= bool(delta.tool_calls)
                logprobs = self.logprobs.choice(o)
                if delta.content or delta.tool_calls or o.finish_reason or logprobs:
                    reason = tools.finish_reason(self.request, called[o.index], o.finish_reason)
                    choice = ChunkChoice(
                        index=o.index, delta=delta, finish_reason=reason, logprobs=logprobs
                    )
                    yield chunk([choice])
        if include_usage:
            yield chunk([], self._usage(completion_tokens, cached_tokens))


async def prepare_chat(
    body: ChatCompletionRequest,
    request: Request,
    runtime: Runtime,
    setup: ChatSetup,
    endpoint: str = "chat",
) -> ChatAnswer:
    """Everything before the engine, along `ServedRequest`'s path: vLLM's checks of the
    body, the tool settings' refusals and constraint, the prompt (audio decoded, template
    rendered) and the sampling parameters checked as the engine checks them. Refusals are
    400s before the engine, or a stream, sees the request. `endpoint` labels the metrics
    (another endpoint that translates its body into a chat request reuses all of this)."""
    think = runtime.models.is_think(body.model, body.thinking)
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options needs stream: true.", param="stream_options")
    view = vllm_view(body)  # vLLM's checks of the fields it shares with us
    asked = view.structured_outputs
    view = setup.tools.check(view)
    # vLLM's own check of the parameters (the constraint compiled by the backend, the token
    # ids in range), now: a refusal costs no admission and no audio decoding. The checked
    # constraint, its backend chosen, is the one the engine gets; one the tool parser wrote
    # is named "tools" in a refusal.
    constraint = structured.structured_outputs(view)
    param = structured.constraint_param(view, view.structured_outputs is not asked)
    structured.verify(sampling_params(body, view, 1, constraint), runtime.engine, param)
    tools = setup.tools.tool_dicts(view)
    conversation, refs = to_conversation(body.messages, tools, runtime.inputs.default_system)
    served = ServedRequest(runtime, request, endpoint)

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
        max_tokens = max_tokens_for(body, prompt_len, runtime.inputs.max_model_len)
        return engine_input, sampling_params(body, view, max_tokens, constraint)

    engine_input, params = await served.prepare(prepare)
    # As vLLM: the answer continues the last turn when it is the answer's role.
    role = "assistant" if body.add_generation_prompt else conversation[-1]["role"]
    echo = body.echo and conversation[-1]["role"] == role
    as_token_ids = body.return_tokens_as_token_ids
    if as_token_ids is None:
        as_token_ids = runtime.config.return_tokens_as_token_ids
    return ChatAnswer(
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
