"""POST /tokenize and /detokenize, as vLLM's server has them (`vllm/entrypoints/serve/tokenize/
protocol.py`): a text prompt or chat messages (audio included) in, token ids out, and back."""

from typing import Annotated, Any

from pydantic import BaseModel, Discriminator, Field, Tag

from af3_serve.protocol import Message, StrictModel

# Token ids as vLLM bounds them; ids past the vocabulary are refused when decoded.
TokenId = Annotated[int, Field(ge=0, le=2**63 - 1)]


class TokenizeCompletionRequest(StrictModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(StrictModel):
    """Counted exactly as /v1/chat/completions counts the same messages: each audio expanded
    into its placeholders, so `count` equals that answer's `usage.prompt_tokens`."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    # Qwen2.5's tokenizer adds no special tokens of its own (no BOS), so this changes nothing;
    # accepted because vLLM's clients send it.
    add_special_tokens: bool = False
    return_token_strs: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    # Our extension, as on chat: thinking mode (same as naming the "-think" model).
    thinking: bool | None = None


def _kind(body: Any) -> str:
    return "chat" if isinstance(body, dict) and "messages" in body else "prompt"


TokenizeRequest = Annotated[
    Annotated[TokenizeChatRequest, Tag("chat")]
    | Annotated[TokenizeCompletionRequest, Tag("prompt")],
    Discriminator(_kind),
]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(StrictModel):
    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str
