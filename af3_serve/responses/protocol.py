"""POST /v1/responses, OpenAI's Responses API as far as AF3 serves it: text, `input_audio`
and `input_file` (audio) parts, instructions, earlier turns through `previous_response_id`
or the whole input, and the streamed events by their OpenAI names."""

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from af3_serve.protocol import InputAudio, StrictModel, random_id


class InputText(StrictModel):
    type: Literal["input_text"]
    text: str


class InputAudioContent(StrictModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


class InputFile(StrictModel):
    """An audio file: `file_data` as a `data:` URL (or bare base64 with `filename`'s
    extension), or `file_url` (fetched as `audio_url` is). No Files API: no `file_id`."""

    type: Literal["input_file"]
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


class OutputText(StrictModel):
    """An earlier answer's text, as a client sends an assistant turn back."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] | None = None


InputContent = Annotated[
    InputText | InputAudioContent | InputFile | OutputText, Field(discriminator="type")
]


class InputMessage(StrictModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputContent]
    id: str | None = None
    status: str | None = None


class _CallItem(StrictModel):
    call_id: str
    id: str | None = None
    status: str | None = None


class FunctionCall(_CallItem):
    type: Literal["function_call"]
    name: str
    arguments: str


class FunctionCallOutput(_CallItem):
    type: Literal["function_call_output"]
    output: str


def _item_type(item: Any) -> str:
    return item.get("type", "message") if isinstance(item, dict) else "message"


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCall, Tag("function_call")]
    | Annotated[FunctionCallOutput, Tag("function_call_output")],
    Discriminator(_item_type),
]


class PlainText(StrictModel):
    type: Literal["text"] = "text"


class JsonObject(StrictModel):
    type: Literal["json_object"]


class JsonSchema(StrictModel):
    """The Responses API's json_schema format: flat, where chat nests it in `json_schema`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["json_schema"]
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[PlainText | JsonObject | JsonSchema, Field(discriminator="type")]


class TextConfig(StrictModel):
    format: TextFormat = PlainText()
    verbosity: Literal["medium"] | None = None  # the only one AF3 has


class FunctionTool(StrictModel):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(StrictModel):
    type: Literal["function"]
    name: str


class Reasoning(StrictModel):
    effort: None = None
    summary: None = None


class ResponsesRequest(StrictModel):
    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool = True
    metadata: dict[str, str] | None = None
    user: str | None = None
    text: TextConfig | None = None
    tools: list[FunctionTool] = []
    tool_choice: Literal["none", "auto", "required"] | NamedFunction = "auto"
    parallel_tool_calls: bool = True
    # Thinking is AF3's `-think` model (or `thinking`); no reasoning effort to set.
    reasoning: Reasoning | None = None
    truncation: Literal["disabled"] | None = None
    include: list[str] | None = None
    # Our extensions, as on chat: thinking mode, and a seed for reproducible sampling.
    thinking: bool | None = None
    seed: int | None = None


# The answer ---------------------------------------------------------------------------


class OutputTextPart(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class OutputMessage(BaseModel):
    id: str = Field(default_factory=lambda: random_id("msg"))
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    content: list[OutputTextPart] = []


class FunctionCallOutputItem(BaseModel):
    """A tool call in the answer, as the Responses API puts it among the output items."""

    id: str = Field(default_factory=lambda: random_id("fc"))
    type: Literal["function_call"] = "function_call"
    status: Literal["completed"] = "completed"
    call_id: str
    name: str
    arguments: str


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    audio_tokens: int = 0  # ours, as chat's prompt_tokens_details.audio_tokens


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


def response_id() -> str:
    return random_id("resp")


class Response(BaseModel):
    id: str = Field(default_factory=response_id)
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    status: Literal["in_progress", "completed", "incomplete", "failed"] = "in_progress"
    model: str
    output: list[OutputMessage | FunctionCallOutputItem] = []
    usage: ResponseUsage | None = None
    error: Any = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    parallel_tool_calls: bool = True
    tool_choice: Literal["none", "auto", "required"] | NamedFunction = "auto"
    tools: list[FunctionTool] = []
    text: TextConfig = TextConfig()
    store: bool = True
    metadata: dict[str, str] = {}
    user: str | None = None


class ResponseEvent(BaseModel):
    """One server-sent event of a streamed response; the fields beyond `type` and
    `sequence_number` are those OpenAI's event of that type carries."""

    model_config = {"extra": "allow"}
    type: str
    sequence_number: int
