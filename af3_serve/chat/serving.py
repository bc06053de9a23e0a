"""A chat request before and after the engine: everything it needs checked and prepared
(`prepare_chat`), then the engine's work turned into one `chat.completion` or a stream of
`chat.completion.chunk`s."""

import contextlib
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
from vllm.outputs import CompletionOutput
from vllm.parser.abstract_parser import Parser
from vllm.sampling_params import StructuredOutputsParams

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
    ResponseMessage,
    completion_id,
)
from af3_serve.chat.setup import ChatSetup
from af3_serve.chat.tools import ToolCalling
from af3_serve.chat.vllm_view import vllm_view
from af3_serve.inputs.prompts import AudioRef, last_message_text, to_conversation
from af3_serve.protocol import PromptTokensDetails, Usage
from af3_serve.runtime import Runtime
from af3_serve.sampling import check_stream_options, max_tokens_for, sampling_params
from af3_serve.serving import ServedRequest, last_output


def chat_sampling(
    body: ChatCompletionRequest,
    request: VllmChatRequest,
    max_tokens: int,
    constraint: StructuredOutputsParams | None,
) -> SamplingParams:
    """The shared sampling fields and chat's own: `request` is vLLM's view of `body` after
    any tool parser adjusted it (its skip_special_tokens); `constraint` its structured-output
    constraint."""
    return sampling_params(
        body,
        max_tokens,
        prompt_logprobs=body.prompt_logprobs,
        skip_special_tokens=request.skip_special_tokens,
        structured_outputs=constraint,
    )


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
        final = await last_output(self._outputs())
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
        # aclosing: a client that leaves stops the engine request now, not when the GC runs.
        async with contextlib.aclosing(self.chunk_models()) as models:
            async for chunk in models:
                yield chunk.model_dump_json(exclude_none=True)

    async def chunk_models(self) -> AsyncIterator[ChatCompletionChunk]:
        """The stream's chunks, for the chat stream and for the endpoints that translate
        them into their own events (the Responses and Realtime APIs)."""
        created = int(time.time())
        # vLLM's rule: usage on every chunk needs include_usage too.
        include_usage, continuous = should_include_usage(self.body.stream_options, False)
        completion_tokens = cached_tokens = 0

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
            if continuous and usage is None:
                usage = self._usage(completion_tokens, cached_tokens)
            return ChatCompletionChunk(
                id=self.id, created=created, model=self.body.model, choices=choices, usage=usage
            )

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
    audio_params: list[str] | None = None,
    audios: int | None = None,
    session: str | None = None,
) -> ChatAnswer:
    """Everything before the engine, along `ServedRequest`'s path: vLLM's checks of the
    body, the tool settings' refusals and constraint, the prompt (audio decoded, template
    rendered) and the sampling parameters checked as the engine checks them. Refusals are
    400s before the engine, or a stream, sees the request. `endpoint` labels the metrics
    and `audio_params` names each audio's place in the client's own request, where it is not
    chat's `messages[...]` (the Responses API translates its body into a chat request and
    reuses all of this); `audios`, how many audios the audio parts are, where fewer (a
    realtime conversation's long turn is sent as clips); `session`, the conversation it
    belongs to where the client names none (`ServedRequest`)."""
    think = runtime.models.is_think(body.model, body.thinking)
    check_stream_options(body)
    view = vllm_view(body)  # vLLM's checks of the fields it shares with us
    asked = view.structured_outputs
    view = setup.tools.check(view)
    # vLLM's own check of the parameters (the constraint compiled by the backend, the token
    # ids in range), now: a refusal costs no admission and no audio decoding. The checked
    # constraint, its backend chosen, is the one the engine gets; one the tool parser wrote
    # is named "tools" in a refusal.
    constraint = structured.structured_outputs(view)
    param = structured.constraint_param(view, view.structured_outputs is not asked)
    structured.verify(chat_sampling(body, view, 1, constraint), runtime.engine, param)
    tools = setup.tools.tool_dicts(view)
    conversation, refs = to_conversation(body.messages, tools, runtime.inputs.default_system)
    if audio_params is not None:
        refs = [AudioRef(r.part, param) for r, param in zip(refs, audio_params, strict=True)]
    served = ServedRequest(runtime, request, endpoint, session)

    async def prepare(ticket: Ticket) -> tuple[Any, SamplingParams]:
        engine_input = await runtime.inputs.chat_prompt(
            conversation,
            refs,
            ticket,
            think,
            audios,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
            template_kwargs=body.chat_template_kwargs,
        )
        prompt_len = len(engine_input["prompt_token_ids"])
        max_tokens = max_tokens_for(body, prompt_len, runtime.inputs.max_model_len)
        return engine_input, chat_sampling(body, view, max_tokens, constraint)

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
