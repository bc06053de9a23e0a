"""A Responses request as a chat request, and the chat answer as a response: the input
items become chat messages (after the stored conversation of `previous_response_id`), the
chat endpoint's serving path runs them, and its completion or chunks become a `response`
or the Responses API's events."""

import mimetypes
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from af3_serve.chat.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from af3_serve.edge.errors import APIError
from af3_serve.protocol import (
    AssistantMessage,
    AudioURL,
    AudioURLPart,
    InputAudio,
    InputAudioPart,
    Message,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
)
from af3_serve.protocol import FunctionCall as CalledFunction
from af3_serve.responses.protocol import (
    FunctionCall,
    FunctionCallOutput,
    FunctionCallOutputItem,
    IncompleteDetails,
    InputAudioContent,
    InputFile,
    InputMessage,
    InputText,
    InputTokensDetails,
    JsonObject,
    JsonSchema,
    OutputMessage,
    OutputText,
    OutputTextPart,
    Response,
    ResponseEvent,
    ResponsesRequest,
    ResponseUsage,
)
from af3_serve.sampling import StreamOptions


def _file_part(part: InputFile, param: str) -> AudioURLPart | InputAudioPart:
    """An `input_file` holding audio: a `data:` URL or a URL goes where `audio_url` goes;
    bare base64 takes its format from the file name."""
    if part.file_id is not None:
        raise APIError(
            400,
            "file_id needs a Files API, which this server has none of; send file_data.",
            param=param,
        )
    if part.file_url is not None:
        return AudioURLPart(type="audio_url", audio_url=AudioURL(url=part.file_url))
    if part.file_data is None:
        raise APIError(400, "An input_file needs file_data or file_url.", param=param)
    if part.file_data.startswith("data:"):
        return AudioURLPart(type="audio_url", audio_url=AudioURL(url=part.file_data))
    fmt = (part.filename or "").rpartition(".")[2].lower()
    if not fmt or mimetypes.guess_type(f"x.{fmt}")[0] is None:
        raise APIError(
            400,
            "Bare base64 file_data needs a filename with the audio's extension (e.g. a.wav), "
            "or send it as a data: URL.",
            param=param,
        )
    return InputAudioPart(
        type="input_audio", input_audio=InputAudio(data=part.file_data, format=fmt)
    )


def _user_content(
    content: list[Any], path: str, audio_params: list[str]
) -> list[TextPart | InputAudioPart | AudioURLPart]:
    parts: list[TextPart | InputAudioPart | AudioURLPart] = []
    for j, part in enumerate(content):
        where = f"{path}.content[{j}]"
        if isinstance(part, InputText):
            parts.append(TextPart(type="text", text=part.text))
        elif isinstance(part, InputAudioContent):
            parts.append(InputAudioPart(type="input_audio", input_audio=part.input_audio))
            audio_params.append(where + ".input_audio.data")
        elif isinstance(part, InputFile):
            parts.append(_file_part(part, where))
            audio_params.append(where + (".file_url" if part.file_url else ".file_data"))
        else:
            raise APIError(400, "output_text belongs in an assistant message.", param=where)
    return parts


def _message(item: InputMessage, path: str, audio_params: list[str]) -> Message:
    content = item.content
    if item.role == "user":
        if isinstance(content, str):
            return UserMessage(role="user", content=content)
        return UserMessage(role="user", content=_user_content(content, path, audio_params))
    if not isinstance(content, str):
        if any(not isinstance(p, InputText | OutputText) for p in content):
            raise APIError(400, "Only a user message may hold audio.", param=f"{path}.content")
        content = "".join(p.text for p in content)
    if item.role == "assistant":
        return AssistantMessage(role="assistant", content=content)
    return SystemMessage(role=item.role, content=content)


def _add_call(turn: list[Message], item: FunctionCall) -> None:
    """A call the model made: calls in a row are one assistant turn (parallel calls)."""
    call = ToolCall(
        id=item.call_id, function=CalledFunction(name=item.name, arguments=item.arguments)
    )
    last = turn[-1] if turn else None
    if isinstance(last, AssistantMessage) and last.tool_calls:
        last.tool_calls.append(call)
    else:
        turn.append(AssistantMessage(role="assistant", tool_calls=[call]))


def to_messages(body: ResponsesRequest, history: list[Message]) -> tuple[list[Message], list[str]]:
    """This turn's input as chat messages (after `history`, the stored conversation), and
    where in the request each audio came from, in prompt order."""
    audio_params = ["previous_response_id"] * sum(
        isinstance(p, InputAudioPart | AudioURLPart)
        for m in history
        if not isinstance(m.content, str | None)
        for p in m.content
    )
    turn: list[Message] = []
    if isinstance(body.input, str):
        turn.append(UserMessage(role="user", content=body.input))
    else:
        for i, item in enumerate(body.input):
            if isinstance(item, InputMessage):
                turn.append(_message(item, f"input[{i}]", audio_params))
            elif isinstance(item, FunctionCallOutput):
                turn.append(
                    ToolMessage(role="tool", content=item.output, tool_call_id=item.call_id)
                )
            else:
                _add_call(turn, item)
    if not turn:
        raise APIError(400, "The input is empty.", param="input")
    return turn, audio_params


def chat_request(body: ResponsesRequest, messages: list[Message]) -> ChatCompletionRequest:
    """The chat request that answers this response (usage always streamed: the response's
    last event carries it)."""
    system = [SystemMessage(role="system", content=body.instructions)] if body.instructions else []
    fmt = body.text.format if body.text else None
    response_format: dict[str, Any] | None = None
    if isinstance(fmt, JsonObject):
        response_format = {"type": "json_object"}
    elif isinstance(fmt, JsonSchema):
        nested = {"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict}
        if fmt.description is not None:
            nested["description"] = fmt.description
        response_format = {"type": "json_schema", "json_schema": nested}
    tools = [
        {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
        for t in body.tools
    ]
    tool_choice: Any = body.tool_choice
    if not isinstance(tool_choice, str):
        tool_choice = {"type": "function", "function": {"name": tool_choice.name}}
    return ChatCompletionRequest(
        model=body.model,
        messages=system + messages,
        response_format=response_format,
        tools=tools or None,
        tool_choice=tool_choice if tools else None,
        parallel_tool_calls=body.parallel_tool_calls,
        max_tokens=body.max_output_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        thinking=body.thinking,
        user=body.user,
        stream=body.stream,
        stream_options=StreamOptions(include_usage=True) if body.stream else None,
    )


def _usage(usage: Usage) -> ResponseUsage:
    details = usage.prompt_tokens_details
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(
            cached_tokens=details.cached_tokens, audio_tokens=details.audio_tokens
        ),
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


@dataclass
class ResponseAnswer:
    """One response: its fields echo the request; `finish` fills in the answer."""

    body: ResponsesRequest
    response: Response = field(init=False)

    def __post_init__(self) -> None:
        b = self.body
        self.response = Response(
            model=b.model,
            instructions=b.instructions,
            previous_response_id=b.previous_response_id,
            max_output_tokens=b.max_output_tokens,
            temperature=b.temperature,
            top_p=b.top_p,
            parallel_tool_calls=b.parallel_tool_calls,
            tool_choice=b.tool_choice,
            tools=b.tools,
            store=b.store,
            metadata=b.metadata or {},
            user=b.user,
        )
        self.message = OutputMessage(status="in_progress")

    def finish(
        self,
        text: str,
        calls: list[ToolCall],
        finish_reason: str | None,
        usage: Usage | None,
        streamed: bool = False,
    ) -> Response:
        """The answer's output items: its message (left out when the model only called
        tools, unless a stream has already announced it), then its tool calls."""
        incomplete = finish_reason == "length"
        output: list[OutputMessage | FunctionCallOutputItem] = []
        if text or not calls or streamed:
            self.message.status = "incomplete" if incomplete else "completed"
            self.message.content = [OutputTextPart(text=text)]
            output.append(self.message)
        output += [
            FunctionCallOutputItem(
                call_id=c.id, name=c.function.name, arguments=c.function.arguments
            )
            for c in calls
        ]
        self.response.output = output
        self.response.status = "incomplete" if incomplete else "completed"
        if incomplete:
            self.response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
        self.response.usage = _usage(usage) if usage else None
        self.said = AssistantMessage(
            role="assistant", content=text or None, tool_calls=calls or None
        )
        return self.response

    def from_completion(self, completion: ChatCompletion) -> Response:
        (choice,) = completion.choices
        message = choice.message
        return self.finish(
            message.content or "", message.tool_calls or [], choice.finish_reason, completion.usage
        )

    async def events(
        self, chunks: AsyncIterator[ChatCompletionChunk], on_done: Callable[[Response], None]
    ) -> AsyncIterator[str]:
        """The chat answer's chunks as the Responses API's events (JSON payloads for
        `ServedRequest.stream`); `on_done` gets the finished response (to store it)."""
        sequence = 0
        item = {"item_id": self.message.id, "output_index": 0}
        part = {**item, "content_index": 0}

        def event(kind: str, **fields: Any) -> str:
            nonlocal sequence
            sequence += 1
            payload = ResponseEvent(type=f"response.{kind}", sequence_number=sequence - 1, **fields)
            return payload.model_dump_json()

        yield event("created", response=self.response.model_dump())
        yield event("in_progress", response=self.response.model_dump())
        yield event("output_item.added", output_index=0, item=self.message.model_dump())
        yield event("content_part.added", **part, part=OutputTextPart(text="").model_dump())
        text, finish_reason, usage = "", None, None
        calls: dict[int, dict[str, str]] = {}  # tool calls by index, as their pieces arrive
        async for chunk in chunks:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                finish_reason = choice.finish_reason or finish_reason
                if choice.delta.content:
                    text += choice.delta.content
                    yield event(
                        "output_text.delta", **part, delta=choice.delta.content, logprobs=[]
                    )
                for piece in choice.delta.tool_calls or []:
                    call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = piece.id or call["id"]
                    if piece.function is not None:
                        call["name"] += piece.function.name or ""
                        call["arguments"] += piece.function.arguments or ""
        tool_calls = [
            ToolCall(id=c["id"], function=CalledFunction(name=c["name"], arguments=c["arguments"]))
            for _, c in sorted(calls.items())
        ]
        response = self.finish(text, tool_calls, finish_reason, usage, streamed=True)
        on_done(response)
        yield event("output_text.done", **part, text=text, logprobs=[])
        yield event("content_part.done", **part, part=OutputTextPart(text=text).model_dump())
        yield event("output_item.done", output_index=0, item=self.message.model_dump())
        # Tool calls follow the message as whole items, once the answer has ended.
        for at, call_item in enumerate(response.output[1:], start=1):
            yield event("output_item.added", output_index=at, item=call_item.model_dump())
            where = {"item_id": call_item.id, "output_index": at}
            yield event("function_call_arguments.delta", **where, delta=call_item.arguments)
            yield event("function_call_arguments.done", **where, arguments=call_item.arguments)
            yield event("output_item.done", output_index=at, item=call_item.model_dump())
        yield event(response.status, response=response.model_dump())
