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
    Usage,
    UserMessage,
)
from af3_serve.responses.protocol import (
    IncompleteDetails,
    InputAudioContent,
    InputFile,
    InputMessage,
    InputText,
    InputTokensDetails,
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
            if not isinstance(item, InputMessage):
                raise APIError(
                    400,
                    "Function calls in the input need function tools, which this server does "
                    "not serve yet.",
                    param=f"input[{i}]",
                )
            turn.append(_message(item, f"input[{i}]", audio_params))
    if not turn:
        raise APIError(400, "The input is empty.", param="input")
    return turn, audio_params


def chat_request(body: ResponsesRequest, messages: list[Message]) -> ChatCompletionRequest:
    """The chat request that answers this response (usage always streamed: the response's
    last event carries it)."""
    system = [SystemMessage(role="system", content=body.instructions)] if body.instructions else []
    return ChatCompletionRequest(
        model=body.model,
        messages=system + messages,
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

    def finish(self, text: str, finish_reason: str | None, usage: Usage | None) -> Response:
        incomplete = finish_reason == "length"
        self.message.status = "incomplete" if incomplete else "completed"
        self.message.content = [OutputTextPart(text=text)]
        self.response.output = [self.message]
        self.response.status = "incomplete" if incomplete else "completed"
        if incomplete:
            self.response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
        self.response.usage = _usage(usage) if usage else None
        return self.response

    def from_completion(self, completion: ChatCompletion) -> Response:
        (choice,) = completion.choices
        return self.finish(choice.message.content, choice.finish_reason, completion.usage)

    async def events(
        self, chunks: AsyncIterator[str], on_done: Callable[[Response], None]
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
        async for payload in chunks:
            chunk = ChatCompletionChunk.model_validate_json(payload)
            usage = chunk.usage or usage
            for choice in chunk.choices:
                finish_reason = choice.finish_reason or finish_reason
                if choice.delta.content:
                    text += choice.delta.content
                    yield event(
                        "output_text.delta", **part, delta=choice.delta.content, logprobs=[]
                    )
        response = self.finish(text, finish_reason, usage)
        on_done(response)
        yield event("output_text.done", **part, text=text, logprobs=[])
        yield event("content_part.done", **part, part=OutputTextPart(text=text).model_dump())
        yield event("output_item.done", output_index=0, item=self.message.model_dump())
        yield event(response.status, response=response.model_dump())
