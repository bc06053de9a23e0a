"""A text-completion request's engine work turned into OpenAI's answer: one engine request
per prompt (each sampling `n` choices), answered whole or streamed in prompt order."""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase
from vllm import SamplingParams
from vllm.outputs import CompletionOutput, RequestOutput

from af3_serve.completions.protocol import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    completion_id,
)
from af3_serve.protocol import PromptTokensDetails, Usage
from af3_serve.serving import ServedRequest, in_order, last_output


def _logprobs(o: CompletionOutput, top: int, offset: int) -> CompletionLogprobs | None:
    """OpenAI's legacy logprobs: each token's text, logprob, top alternatives and its
    character offset in the choice's text (`offset`: where this output's text starts)."""
    if o.logprobs is None:
        return None
    result = CompletionLogprobs()
    for token_id, candidates in zip(o.token_ids, o.logprobs, strict=True):
        chosen = candidates[token_id]
        token = chosen.decoded_token or ""
        ranked = sorted(candidates.values(), key=lambda lp: lp.rank or 0)[:top]
        result.tokens.append(token)
        result.token_logprobs.append(chosen.logprob)
        result.top_logprobs.append({lp.decoded_token or "": lp.logprob for lp in ranked})
        result.text_offset.append(offset)
        offset += len(token)
    return result


@dataclass
class CompletionAnswer:
    """The engine requests of one admitted text-completion request."""

    served: ServedRequest
    body: CompletionRequest
    inputs: list[dict[str, Any]]  # {"prompt_token_ids": [...]}, one a prompt
    params: SamplingParams
    think: bool
    tokenizer: PreTrainedTokenizerBase
    id: str = field(default_factory=completion_id)

    def __post_init__(self) -> None:
        # What each prompt's choices begin with: the prompt itself with `echo`.
        self.echoes = [
            self.tokenizer.decode(i["prompt_token_ids"]) if self.body.echo else ""
            for i in self.inputs
        ]

    def _streams(self) -> list[AsyncIterator[RequestOutput]]:
        return [
            self.served.generate(engine_input, self.params, f"{self.id}-{i}", self.think)
            for i, engine_input in enumerate(self.inputs)
        ]

    def _usage(self, completion_tokens: int, cached_tokens: int) -> Usage:
        prompt_tokens = sum(len(i["prompt_token_ids"]) for i in self.inputs)
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(audio_tokens=0, cached_tokens=cached_tokens),
        )

    async def completion(self) -> Completion:
        finals = await asyncio.gather(*(last_output(s) for s in self._streams()))
        choices = []
        for i, final in enumerate(finals):
            echo = self.echoes[i]
            for o in final.outputs:
                choices.append(
                    CompletionChoice(
                        index=i * self.body.n + o.index,
                        text=echo + o.text,
                        logprobs=_logprobs(o, self.body.logprobs or 0, len(echo)),
                        finish_reason=o.finish_reason,
                    )
                )
        return Completion(
            id=self.id,
            model=self.body.model,
            choices=choices,
            usage=self._usage(
                sum(len(o.token_ids) for f in finals for o in f.outputs),
                sum(f.num_cached_tokens or 0 for f in finals),
            ),
        )

    async def chunks(self) -> AsyncIterator[str]:
        """OpenAI's stream: `text_completion` objects with each choice's new text (the
        echoed prompt first), as JSON payloads for `ServedRequest.stream`."""
        created = int(time.time())
        n = self.body.n

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
            return Completion(
                id=self.id, created=created, model=self.body.model, choices=choices, usage=usage
            ).model_dump_json(exclude_none=True)

        offsets: dict[int, int] = {}  # each choice's text so far, for logprobs' offsets
        completion_tokens = cached_tokens = 0
        current = -1
        async for prompt, out in in_order(self._streams()):
            if prompt != current:
                current = prompt
                cached_tokens += out.num_cached_tokens or 0
                if echo := self.echoes[prompt]:
                    yield chunk(
                        [CompletionChoice(index=prompt * n + j, text=echo) for j in range(n)]
                    )
            for o in out.outputs:
                index = prompt * n + o.index
                offset = offsets.get(index, len(self.echoes[prompt]))
                completion_tokens += len(o.token_ids)
                offsets[index] = offset + len(o.text)
                if o.text or o.finish_reason:
                    choice = CompletionChoice(
                        index=index,
                        text=o.text,
                        logprobs=_logprobs(o, self.body.logprobs or 0, offset),
                        finish_reason=o.finish_reason,
                    )
                    yield chunk([choice])
        if self.body.stream_options and self.body.stream_options.include_usage:
            yield chunk([], self._usage(completion_tokens, cached_tokens))
