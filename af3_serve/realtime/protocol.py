"""OpenAI's GA Realtime events, the part af3-serve serves: the client events it reads and the
server events it sends, shaped as the `openai` client's types (openai/types/realtime/)."""

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from af3_serve.edge.errors import APIError

ENDPOINT = "realtime"  # the metrics' label of realtime engine work


def new_id(prefix: str) -> str:
    """OpenAI's ids: `event_...`, `sess_...`, `item_...`, `resp_...`."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class Lenient(BaseModel):
    """Fields OpenAI defines that do not change what AF3 does (voice, tracing, noise
    reduction, ...) are accepted and ignored, so a client written for OpenAI connects."""

    model_config = ConfigDict(extra="ignore")


# The session -------------------------------------------------------------------------


class AudioFormat(Lenient):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: Literal[16000, 24000] | None = None  # audio/pcm only: 24 kHz as OpenAI, or 16 kHz


class Transcription(Lenient):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class TurnDetection(Lenient):
    """`server_vad`'s settings, with OpenAI's defaults (`semantic_vad` is refused)."""

    type: str
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0, le=10_000)
    silence_duration_ms: int = Field(500, ge=32, le=10_000)
    create_response: bool = True
    interrupt_response: bool = True  # speech heard during a response cancels it
    idle_timeout_ms: int | None = None


class AudioInput(Lenient):
    format: AudioFormat | None = None
    transcription: Transcription | None = None
    # A dict as OpenAI sends it; None: the client commits. Not every field is set in an update.
    turn_detection: TurnDetection | None = None


class AudioConfig(Lenient):
    input: AudioInput | None = None
    output: dict[str, Any] | None = None


class SessionConfig(Lenient):
    """A `session.update`'s session (the fields it sets), and what `session.*` events show."""

    type: Literal["realtime", "transcription"] | None = None
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    audio: AudioConfig | None = None


# Client events ------------------------------------------------------------------------


class ClientEvent(Lenient):
    type: str
    event_id: str | None = None


class SessionUpdate(ClientEvent):
    session: SessionConfig


class AudioAppend(ClientEvent):
    audio: str


class ContentPart(Lenient):
    type: Literal["input_text", "input_audio", "output_text", "text"]
    text: str | None = None
    audio: str | None = None


class ItemIn(Lenient):
    type: Literal["message"]
    role: Literal["user", "assistant", "system"]
    content: list[ContentPart] = Field(min_length=1)
    id: str | None = None


class ItemCreate(ClientEvent):
    item: ItemIn
    previous_item_id: str | None = None


class ResponseConfig(Lenient):
    instructions: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    max_output_tokens: int | Literal["inf"] | None = None


class ResponseCreate(ClientEvent):
    response: ResponseConfig | None = None


class ResponseCancel(ClientEvent):
    response_id: str | None = None


# Server events ------------------------------------------------------------------------


class ServerEvent(BaseModel):
    event_id: str = Field(default_factory=lambda: new_id("event"))


class ErrorDetail(BaseModel):
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    event_id: str | None = None  # the client event it answers


class ErrorEvent(ServerEvent):
    type: Literal["error"] = "error"
    error: ErrorDetail

    @classmethod
    def of(cls, exc: APIError, event_id: str | None = None) -> "ErrorEvent":
        body = exc.body().error
        return cls(
            error=ErrorDetail(
                message=body.message,
                type=body.type,
                code=body.code,
                param=body.param,
                event_id=event_id,
            )
        )


class SessionEvent(ServerEvent):
    type: Literal["session.created", "session.updated"]
    session: dict[str, Any]


class BufferEvent(ServerEvent):
    type: Literal["input_audio_buffer.committed", "input_audio_buffer.cleared"]
    item_id: str | None = None
    previous_item_id: str | None = None


class SpeechStarted(ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str  # the item the turn will be committed as


class SpeechStopped(ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class ItemContent(BaseModel):
    type: Literal["input_audio", "input_text", "output_text"]
    text: str | None = None
    transcript: str | None = None


class Item(BaseModel):
    id: str
    type: Literal["message"] = "message"
    object: Literal["realtime.item"] = "realtime.item"
    status: Literal["completed", "incomplete", "in_progress"] = "completed"
    role: Literal["user", "assistant", "system"]
    content: list[ItemContent]


class ItemEvent(ServerEvent):
    type: Literal["conversation.item.added", "conversation.item.done"]
    item: Item
    previous_item_id: str | None = None


class TranscriptionDelta(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.delta"] = (
        "conversation.item.input_audio_transcription.delta"
    )
    item_id: str
    content_index: int = 0
    delta: str


class TranscriptionCompleted(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed"
    )
    item_id: str
    content_index: int = 0
    transcript: str
    usage: dict[str, Any]  # the transcription endpoint's token usage, `type: "tokens"`


class TranscriptionFailed(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.failed"] = (
        "conversation.item.input_audio_transcription.failed"
    )
    item_id: str
    content_index: int = 0
    error: ErrorDetail


class ResponseUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_token_details: dict[str, int]
    output_token_details: dict[str, int]


class Response(BaseModel):
    id: str
    object: Literal["realtime.response"] = "realtime.response"
    status: Literal["completed", "cancelled", "failed", "incomplete", "in_progress"]
    status_details: dict[str, Any] | None = None
    output: list[Item] = []
    output_modalities: list[Literal["text"]] = ["text"]
    conversation_id: str | None = None
    max_output_tokens: int | Literal["inf"] = "inf"
    usage: ResponseUsage | None = None


class ResponseEvent(ServerEvent):
    type: Literal["response.created", "response.done"]
    response: Response


class OutputItemEvent(ServerEvent):
    type: Literal["response.output_item.added", "response.output_item.done"]
    response_id: str
    output_index: int = 0
    item: Item


class Part(BaseModel):
    type: Literal["text"] = "text"
    text: str


class InContentEvent(ServerEvent):
    """An event about one content part of a response's output item."""

    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0


class ContentPartEvent(InContentEvent):
    type: Literal["response.content_part.added", "response.content_part.done"]
    part: Part


class TextDelta(InContentEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    delta: str


class TextDone(InContentEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    text: str
