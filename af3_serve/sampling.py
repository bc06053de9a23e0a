"""What chat and text completions share of a request: the sampling fields (OpenAI's and the
vLLM extensions we serve) and the one mapping of them onto vLLM's `SamplingParams`, with
the context check that names `max_tokens`."""

from pydantic import Field
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import RequestOutputKind

from af3_serve.edge.errors import APIError
from af3_serve.protocol import StrictModel


class StreamOptions(StrictModel):
    include_usage: bool = False


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

    def answer_tokens(self) -> int | None:
        """The answer's token limit the client asked for (None: what the context leaves)."""
        return self.max_tokens

    def logprobs_asked(self) -> int | None:
        """Top logprobs per token (0: the sampled token's only), None for none."""
        return None


def check_stream_options(body: SamplingRequest) -> None:
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options needs stream: true.", param="stream_options")


def sampling_params(body: SamplingRequest, prompt_len: int, max_model_len: int) -> SamplingParams:
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
    try:
        return SamplingParams(
            n=body.n,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            max_tokens=max_tokens,
            stop=body.stop,
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            repetition_penalty=body.repetition_penalty,
            min_tokens=min(body.min_tokens, max_tokens),
            ignore_eos=body.ignore_eos,
            logprobs=body.logprobs_asked(),
            output_kind=RequestOutputKind.DELTA if body.stream else RequestOutputKind.FINAL_ONLY,
        )
    except (ValueError, VLLMValidationError) as exc:
        raise APIError(400, str(exc), code="invalid_value") from exc
