"""The OpenAI chat-completions schema, as far as AF3 serves it: the request body, the
completion and its chunks. Content parts and messages are shared with the other endpoints
(`af3_serve/protocol.py`). Structured outputs and tools take vLLM's own types, so a body
`vllm serve` accepts means the same here."""

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from vllm.entrypoints.generate.base.protocol import AnyResponseFormat
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionToolsParam,
)
from vllm.sampling_params import StructuredOutputsParams

from af3_serve.edge.errors import APIError
from af3_serve.protocol import Message, ModelAnswer, ToolCall, Usage, random_id
from af3_serve.sampling import SamplingRequest

# What a load balancer adds to every chat body it forwards (vLLM's router re-serializes the
# body with these SGLang-style fields): at these values they ask for what we do anyway, so
# they are dropped; any other value asks for what we do not do and stays an unsupported
# parameter (400, naming it).
BALANCER_DEFAULTS: dict[str, bool] = {
    "no_stop_trim": False,
    "skip_special_tokens": True,
    "separate_reasoning": True,
    "stream_reasoning": True,
    "return_hidden_states": False,
    "include_reasoning": True,
}


class ChatCompletionRequest(SamplingRequest):
    @model_validator(mode="before")
    @classmethod
    def _drop_balancer_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and not BALANCER_DEFAULTS.keys().isdisjoint(data):
            data = {
                k: v
                for k, v in data.items()
                if k not in BALANCER_DEFAULTS or v is not BALANCER_DEFAULTS[k]
            }
        return data

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # Our extension: AF3's thinking mode (same as asking for the "-think" model).
    thinking: bool | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Structured outputs: OpenAI's field, and vLLM's extension (json, regex, choice, grammar,
    # structural_tag), both mapped to vLLM's StructuredOutputsParams.
    response_format: AnyResponseFormat | None = None
    structured_outputs: StructuredOutputsParams | None = None
    tools: list[ChatCompletionToolsParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | ChatCompletionNamedToolChoiceParam | None = (
        None  # OpenAI's default: "auto" with tools, "none" without
    )
    parallel_tool_calls: bool | None = True
    prompt_logprobs: int | None = Field(None, ge=-1)
    return_tokens_as_token_ids: bool | None = None  # default: the server's flag
    # Chat-template controls, as vLLM's.
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_asked(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class PromptLogprob(BaseModel):
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class ResponseMessage(BaseModel):
    role: str = "assistant"  # the last message's role when it is continued (echo)
    content: str | None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


def completion_id() -> str:
    return random_id("chatcmpl")


class ChatCompletion(ModelAnswer):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: Usage
    # vLLM's extension (prompt_logprobs): per prompt token, its candidates by token id.
    prompt_logprobs: list[dict[int, PromptLogprob] | None] | None = None


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    """A piece of a tool call in a stream, as OpenAI sends it: the first piece of call
    `index` carries its id, type and name; later ones add to its arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None


class Delta(BaseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(ModelAnswer):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None
