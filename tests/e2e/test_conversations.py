"""AF3-Chat style conversations: several audios over several turns, earlier answers in the
history, and the cached prefix reused when the next question comes."""

import re
from pathlib import Path

import httpx
import numpy as np
import openai
from transformers import AutoTokenizer
from vllm import SamplingParams

from tests.support.audio_files import as_sent, audio_part, make_clip
from tests.support.oracles import HFReference, answer_text

MODEL = "audio-flamingo-3"
MAX_TOKENS = 10


def counter(server, name: str) -> float:
    """A vLLM counter summed over its label sets, read from the server's /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    pattern = rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$"
    return sum(float(v) for v in re.findall(pattern, text, flags=re.MULTILINE))


def block_size(server) -> int:
    """The engine's KV block size: the prefix cache reuses whole blocks only."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return int(re.search(r'^vllm:cache_config_info\{[^}]*block_size="(\d+)"', text, re.M)[1])


def histogram_sum(server, name: str) -> float:
    return counter(server, f"{name}_sum")


def ask(client, conversation: list[dict]) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=MODEL, messages=conversation, max_tokens=MAX_TOKENS, temperature=0
    )


def answer(client, conversation: list[dict]) -> dict:
    return {"role": "assistant", "content": ask(client, conversation).choices[0].message.content}


def template_form(conversation: list[dict]) -> list[dict]:
    """The messages as the chat template sees them (each audio a `{"type": "audio"}`)."""
    return [
        {
            "role": m["role"],
            "content": m["content"]
            if isinstance(m["content"], str)
            else [p if p["type"] == "text" else {"type": "audio"} for p in m["content"]],
        }
        for m in conversation
    ]


def render(tokenizer, conversation: list[dict]) -> str:
    return tokenizer.apply_chat_template(
        template_form(conversation), tokenize=False, add_generation_prompt=True
    )


def shared_prompt_tokens(tokenizer, conversations: list[list[dict]], audio_tokens: int) -> int:
    """How many leading prompt tokens two conversations share, with the one `<sound>` they
    share expanded to its audio tokens."""
    first, second = (tokenizer(render(tokenizer, c)).input_ids for c in conversations)
    same = next(
        (i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b),
        min(len(first), len(second)),
    )
    return same + audio_tokens - 1


def test_second_question_reuses_the_cached_audio_and_stays_token_exact(
    client, server, tiny_checkpoint: Path, speech: np.ndarray
) -> None:
    clip = as_sent(make_clip(speech, 61.0))  # three windows, 1,525 audio tokens
    first = [
        {"role": "user", "content": [audio_part(clip), {"type": "text", "text": "Who speaks?"}]}
    ]
    reply1 = ask(client, first)
    second = [
        *first,
        {"role": "assistant", "content": reply1.choices[0].message.content},
        {"role": "user", "content": "Why do you think so?"},
    ]
    hits = counter(server, "vllm:prefix_cache_hits_total")
    mm_hits = counter(server, "vllm:mm_cache_hits_total")
    computed = histogram_sum(server, "vllm:request_prefill_kv_computed_tokens")
    reply2 = ask(client, second)

    usage = reply2.usage
    cached = usage.prompt_tokens_details.cached_tokens
    # Everything the two prompts share (system turn, the audio, the first question) is
    # served from the cache, down to whole blocks.
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    shared = shared_prompt_tokens(
        tokenizer, [first, second], usage.prompt_tokens_details.audio_tokens
    )
    assert shared > usage.prompt_tokens_details.audio_tokens
    block = block_size(server)
    assert cached >= shared // block * block
    assert counter(server, "vllm:prefix_cache_hits_total") - hits == cached
    # Only the new tokens are prefilled: fewer than the audio's, so the audio is neither
    # prefilled nor encoded again (vLLM runs the encoder only for uncomputed positions).
    new_tokens = histogram_sum(server, "vllm:request_prefill_kv_computed_tokens") - computed
    assert new_tokens == usage.prompt_tokens - cached
    assert new_tokens < usage.prompt_tokens_details.audio_tokens
    # The processor's cache also knew the audio: it was not processed again either.
    assert counter(server, "vllm:mm_cache_hits_total") > mm_hits

    # Token-exact: the answer from the cache equals transformers' on the whole conversation.
    prompt = render(tokenizer, second)
    expected = HFReference(tiny_checkpoint).generate(prompt, clip, MAX_TOKENS)
    assert answer_text(reply2.choices[0].message.content) == answer_text(
        tokenizer.decode(expected, skip_special_tokens=True)
    )


def test_audios_over_several_turns_equal_the_uncached_engine(
    client, llm, tiny_checkpoint: Path, speech: np.ndarray
) -> None:
    """Two audios in different user turns, an earlier answer in between, a third turn that
    asks about both: each audio lands in its own turn, and the served answer (with the
    first turns cached) equals the offline engine's on the same prompt."""
    first_clip = as_sent(make_clip(speech, 12.0))
    second_clip = as_sent(make_clip(speech[::-1].copy(), 20.0))
    conversation = [
        {"role": "user", "content": [audio_part(first_clip), {"type": "text", "text": "Hi."}]}
    ]
    conversation.append(answer(client, conversation))
    conversation.append(
        {
            "role": "user",
            "content": [{"type": "text", "text": "And this one?"}, audio_part(second_clip)],
        }
    )
    conversation.append(answer(client, conversation))
    conversation.append({"role": "user", "content": "Compare the two recordings."})
    reply = ask(client, conversation)

    prompt = render(AutoTokenizer.from_pretrained(tiny_checkpoint), conversation)
    user_turns = prompt.split("<|im_start|>user\n")[1:]
    assert [turn.count("<sound>") for turn in user_turns] == [1, 1, 0]
    (offline,) = llm.generate(
        {
            "prompt": prompt,
            "multi_modal_data": {"audio": [(first_clip, 16000), (second_clip, 16000)]},
        },
        SamplingParams(max_tokens=MAX_TOKENS, temperature=0),
    )
    assert reply.choices[0].message.content == offline.outputs[0].text
    assert reply.usage.prompt_tokens == len(offline.prompt_token_ids)
    assert reply.usage.prompt_tokens_details.cached_tokens > 0
