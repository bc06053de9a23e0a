"""POST /v1/completions, OpenAI's (legacy) text-completions schema as vLLM serves it: text or
token-id prompts, no audio (audio goes through chat, the Responses API or speech)."""

from typing import Literal

from pydantic import BaseModel, Field

from af3_serve.protocol import ModelAnswer, Usage, random_id
from af3_serve.sampling import SamplingRequest

TokenIds = list[int]


class CompletionRequest(SamplingRequest):
    # One prompt or several (each answered `n` times), each text or token ids.
    prompt: str | TokenIds | list[str | TokenIds]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for this endpoint
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    # Our extension, as on chat: thinking mode (same as naming the "-think" model).
    thinking: bool | None = None

    def logprobs_asked(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list[str | TokenIds]:
        """The prompts, each a text or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return [prompt]
        return list(prompt)


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


def completion_id() -> str:
    return random_id("cmpl")


class Completion(ModelAnswer):
    """A whole answer, and also each streamed chunk (OpenAI's chunks are the same object)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None
