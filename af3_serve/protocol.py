"""What the endpoints share of OpenAI's schema: content parts (text, input_audio, audio_url),
messages (tool calls and tool results included), token usage, and request ids. Each endpoint's own
request and response models live in its package (`chat/protocol.py`, `speech/protocol.py`).

Request models forbid unknown fields, so a parameter we do not implement is a clear 400
instead of being silently ignored.
"""

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class InputAudio(StrictModel):
    data: str = Field(description="base64-encoded audio file")
    format: str = Field(description="wav, mp3, flac, ogg, ...")


class InputAudioPart(StrictModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURL(StrictModel):
    url: str


class AudioURLPart(StrictModel):
    type: Literal["audio_url"]
    audio_url: AudioURL


ContentPart = Annotated[TextPart | InputAudioPart | AudioURLPart, Field(discriminator="type")]
AudioPart = InputAudioPart | AudioURLPart


class SystemMessage(StrictModel):
    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(StrictModel):
    role: Literal["user"]
    content: str | list[ContentPart]
    name: str | None = None


class FunctionCall(StrictModel):
    name: str
    arguments: str = Field(description="the arguments as a JSON object, encoded")


class ToolCall(StrictModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(StrictModel):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    # What OpenAI's client sends back with an assistant turn it received; not rendered.
    refusal: str | None = None


class ToolMessage(StrictModel):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class PromptTokensDetails(BaseModel):
    audio_tokens: int
    cached_tokens: int = 0


class Usage(BaseModel):
    """Token counts of an answer, as chat and text completions report them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ModelAnswer(BaseModel):
    """What every answer object (and chunk) of a generating endpoint begins with."""

    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str


def random_id(prefix: str) -> str:
    """An id for one API request, `prefix-` and 32 hex digits; each endpoint has its own
    prefix (`chatcmpl` for chat completions, as OpenAI's; `trsc` for speech, as vLLM's)."""
    return f"{prefix}-{uuid.uuid4().hex}"
