"""What chat and text completions share of a request: the sampling fields (OpenAI's and the
vLLM extensions we serve), the context check that names `max_tokens`, and the one mapping of
them onto vLLM's `SamplingParams`."""

from typing import Any

from pydantic import Field
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import RequestOutputKind

from af3_serve.edge.errors import APIError
from af3_serve.protocol import StrictModel


class StreamOptions(StrictModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # usage on every chunk (vLLM's extension)


class SamplingRequest(StrictModel):
    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False  # vLLM extension; load tests use it for fixed output lengths
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's sampling extensions and OpenAI's logit_bias (token id -> bias).
    logit_bias: dict[str, float] | None = None
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None

    def answer_tokens(self) -> int | None:
        """The answer's token limit the client asked for (None: what the context leaves)."""
        return self.max_tokens

    def logprobs_asked(self) -> int | None:
        """Top logprobs per token (0: the sampled token's only), None for none."""
        return None


# The fields that mean the same, under the same name, in the body and in SamplingParams.
VLLM_NAMED = (
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "logit_bias",
    "allowed_token_ids",
    "bad_words",
)


def check_stream_options(body: SamplingRequest) -> None:
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options needs stream: true.", param="stream_options")


def max_tokens_for(body: SamplingRequest, prompt_len: int, max_model_len: int) -> int:
    """The answer's budget: what the body asks for, at most the context the prompt left."""
    room = max_model_len - prompt_len
    max_tokens = body.answer_tokens() or room
    if max_tokens > room:
        raise APIError(
            400,
            f"max_tokens is {max_tokens}, but only {room} tokens are left in "
            f"the model's context after the {prompt_len}-token prompt.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return max_tokens


def sampling_params(body: SamplingRequest, max_tokens: int, **extra: Any) -> SamplingParams:
    """The body's sampling as vLLM's `SamplingParams`, checked by vLLM; `extra` holds what
    only one endpoint sets (chat's constraint, prompt logprobs, special tokens)."""
    try:
        return SamplingParams.from_optional(
            **{name: getattr(body, name) for name in VLLM_NAMED},
            max_tokens=max_tokens,
            min_tokens=min(body.min_tokens, max_tokens),
            logprobs=body.logprobs_asked(),
            output_kind=RequestOutputKind.DELTA if body.stream else RequestOutputKind.FINAL_ONLY,
            **extra,
        )
    except VLLMValidationError as exc:
        raise APIError(400, exc.args[0], param=exc.parameter, code="invalid_value") from exc
    except (ValueError, TypeError) as exc:
        raise APIError(400, str(exc), code="invalid_value") from exc
