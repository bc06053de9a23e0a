"""Logprobs in OpenAI's shape: each token's text and its raw bytes. A byte-level BPE token
can hold part of a UTF-8 character, which has no text of its own; its bytes still let a
client rebuild the answer (`b"".join(bytes)` decodes to the text)."""

from collections.abc import Callable
from functools import lru_cache

from tokenizers import decoders
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode
from vllm.logprobs import Logprob, PromptLogprobs, SampleLogprobs
from vllm.outputs import CompletionOutput

from af3_serve.chat.protocol import ChoiceLogprobs, PromptLogprob, TokenLogprob, TopLogprob

TokenBytes = Callable[[int], bytes]


def token_bytes_of(tokenizer: PreTrainedTokenizerBase) -> TokenBytes:
    """A token id -> the bytes it stands for. Byte-level BPE (Qwen2's, AF3's decoder) spells
    each byte as one printable character (GPT-2's table); added tokens are their text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and isinstance(backend.decoder, decoders.ByteLevel)
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}

    @lru_cache(maxsize=65536)
    def token_bytes(token_id: int) -> bytes:
        if token_id in added:
            return added[token_id].encode()
        piece = tokenizer.convert_ids_to_tokens(token_id) or ""
        if byte_level and all(c in byte_of for c in piece):
            return bytes(byte_of[c] for c in piece)
        return tokenizer.decode([token_id]).encode()

    return token_bytes


class LogprobFormat:
    """How one request wants its logprobs: `top` candidates, tokens as text or as
    "token_id:N" (vLLM's `return_tokens_as_token_ids`)."""

    def __init__(self, token_bytes: TokenBytes, top: int, as_token_ids: bool) -> None:
        self.token_bytes = token_bytes
        self.top = top
        self.as_token_ids = as_token_ids

    def _entry(self, token_id: int, lp: Logprob) -> TopLogprob:
        raw = self.token_bytes(token_id)
        if self.as_token_ids:
            token = f"token_id:{token_id}"
        else:
            token = lp.decoded_token or raw.decode(errors="replace")
        return TopLogprob(token=token, logprob=max(lp.logprob, -9999.0), bytes=list(raw))

    def choice(self, output: CompletionOutput) -> ChoiceLogprobs | None:
        if output.logprobs is None:
            return None
        entries = []
        sample: SampleLogprobs = output.logprobs
        for token_id, candidates in zip(output.token_ids, sample, strict=True):
            chosen = self._entry(token_id, candidates[token_id])
            ranked = sorted(candidates.items(), key=lambda item: item[1].rank or 0)[: self.top]
            top = [self._entry(t, lp) for t, lp in ranked]
            entries.append(TokenLogprob(**chosen.model_dump(), top_logprobs=top))
        return ChoiceLogprobs(content=entries)


def prompt_logprobs(logprobs: PromptLogprobs | None) -> list[dict[int, PromptLogprob] | None]:
    """vLLM's prompt_logprobs as its server writes them (the first token has none)."""
    return [
        None
        if entry is None
        else {
            token_id: PromptLogprob(
                logprob=max(lp.logprob, -9999.0), rank=lp.rank, decoded_token=lp.decoded_token
            )
            for token_id, lp in entry.items()
        }
        for entry in logprobs or []
    ]
