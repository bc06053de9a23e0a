"""Our MusicFlamingo (rotary time embeddings, <|sound_bos|>/<|sound_eos|>) in vLLM against
transformers' MusicFlamingoForConditionalGeneration, same weights: the tiny AF-Next
checkpoint (1800 s), one offline engine for the module."""

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from vllm import SamplingParams

from af3_model_executor import ARCHITECTURE
from af3_model_executor.constants import AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN, SAMPLE_RATE
from af3_model_executor.inspection import audio_embeddings, model_class_name
from tests.support.audio_files import make_clip
from tests.support.engine import offline_engine
from tests.support.oracles import HFReference, chat_prompt

CLIP_SECONDS = [1.0, 30.0, 61.0, 600.0, 1200.0, 1800.0]
MAX_TOKENS = 12
TOP_LOGPROBS = 5


@pytest.fixture(scope="module")
def next_llm(tiny_af_next: Path) -> Iterator["object"]:
    """Our model on the tiny AF-Next in vLLM's offline engine: a 30-min prompt (45,002 audio
    tokens) fits its context and prefills in one step."""
    engine = offline_engine(tiny_af_next)
    yield engine
    del engine


@pytest.fixture(scope="module")
def hf(tiny_af_next: Path) -> HFReference:
    return HFReference(tiny_af_next)


@pytest.fixture(scope="module")
def span_ids(hf: HFReference) -> tuple[int, int, int]:
    tokenizer = hf.processor.tokenizer
    bos, eos = tokenizer.convert_tokens_to_ids([AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN])
    return bos, hf.model.config.audio_token_id, eos


def ours_embeddings(llm, audios: list[np.ndarray]) -> list[torch.Tensor]:
    return llm.apply_model(functools.partial(audio_embeddings, audios=audios))[0]


def ours_generate(llm, prompt: str, audios: list[np.ndarray], max_tokens: int = MAX_TOKENS):
    (output,) = llm.generate(
        {"prompt": prompt, "multi_modal_data": {"audio": [(a, SAMPLE_RATE) for a in audios]}},
        SamplingParams(max_tokens=max_tokens, temperature=0, logprobs=TOP_LOGPROBS),
    )
    return output


def spans(token_ids: list[int], span_ids: tuple[int, int, int]) -> list[tuple[int, int]]:
    """(start, audio tokens) of each bos ... eos span of a prompt."""
    bos, audio, eos = span_ids
    found, start = [], None
    for i, token in enumerate(token_ids):
        if token == bos:
            start = i
        elif token == eos:
            assert set(token_ids[start + 1 : i]) == {audio}
            found.append((start, i - start - 1))
    return found


def test_requests_are_served_by_our_class(next_llm) -> None:
    assert next_llm.apply_model(model_class_name) == [ARCHITECTURE]


@pytest.mark.parametrize("seconds", CLIP_SECONDS)
def test_audio_embeddings_match_transformers(next_llm, hf, speech, seconds) -> None:
    """Encoder, rotary time embeddings and adaptor, up to the checkpoint's 30 minutes."""
    clip = make_clip(speech, seconds)
    (ours,) = ours_embeddings(next_llm, [clip])
    reference = hf.embeddings(clip)
    assert ours.shape == reference.shape == (25 * seconds, 128)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seconds", [7.3, 61.0])
def test_placeholder_span_matches_transformers(
    next_llm, hf, tiny_af_next, speech, span_ids, seconds
) -> None:
    clip = make_clip(speech, seconds)
    prompt = chat_prompt(tiny_af_next)
    output = ours_generate(next_llm, prompt, [clip], max_tokens=1)
    reference = hf.prompt_token_ids(prompt, clip)
    assert output.prompt_token_ids == reference
    ((_, tokens),) = spans(output.prompt_token_ids, span_ids)
    assert tokens == reference.count(span_ids[1]) == round(25 * seconds)


def test_greedy_tokens_and_first_logprobs_match_transformers(
    next_llm, hf, tiny_af_next, speech
) -> None:
    prompt = chat_prompt(tiny_af_next)
    answers = []
    for seconds in (7.3, 30.0, 61.0):
        clip = make_clip(speech, seconds)
        completion = ours_generate(next_llm, prompt, [clip]).outputs[0]
        assert list(completion.token_ids) == hf.generate(prompt, clip, MAX_TOKENS)
        reference = hf.next_token_logprobs(prompt, clip)
        first = completion.logprobs[0]
        top = reference.topk(TOP_LOGPROBS)
        assert {token for token, lp in first.items() if lp.rank <= TOP_LOGPROBS} == set(
            top.indices.tolist()
        )
        for token, value in zip(top.indices.tolist(), top.values.tolist(), strict=True):
            assert first[token].logprob == pytest.approx(value, abs=1e-4)
        answers.append(tuple(completion.token_ids))
    assert len(set(answers)) == len(answers)  # the audio matters


def test_two_audios_in_one_prompt_equal_each_alone(
    next_llm, hf, tiny_af_next, speech, span_ids
) -> None:
    """Each audio's windows are timed from its own start: the embeddings of two audios sent
    together equal each sent alone, and the answer equals transformers' on that prompt."""
    first, second = make_clip(speech, 45.0), make_clip(speech[::-1].copy(), 31.0)
    together = ours_embeddings(next_llm, [first, second])
    alone = [ours_embeddings(next_llm, [clip])[0] for clip in (first, second)]
    for joint, single in zip(together, alone, strict=True):
        torch.testing.assert_close(joint, single, rtol=1e-5, atol=1e-5)

    output = ours_generate(next_llm, chat_prompt(tiny_af_next, num_audios=2), [first, second])
    assert [n for _, n in spans(output.prompt_token_ids, span_ids)] == [1125, 775]
    inputs = hf.multi_audio_inputs(output.prompt_token_ids, [first, second])
    assert list(output.outputs[0].token_ids) == hf.generate_from(inputs, MAX_TOKENS)


@pytest.mark.slow
def test_thirty_minute_audio_is_answered_as_transformers_does(
    next_llm, hf, tiny_af_next, speech
) -> None:
    """The longest audio, 45,002 prompt tokens of it, prefilled in one step."""
    clip = make_clip(speech, 1800.0)
    prompt = chat_prompt(tiny_af_next)
    completion = ours_generate(next_llm, prompt, [clip], max_tokens=4).outputs[0]
    reference = hf.next_token_logprobs(prompt, clip)
    first_token = completion.token_ids[0]
    assert first_token == int(reference.argmax())
    assert completion.logprobs[0][first_token].logprob == pytest.approx(
        float(reference[first_token]), abs=1e-3
    )


def test_audio_past_the_checkpoints_limit_is_refused(next_llm, tiny_af_next, speech) -> None:
    with pytest.raises(ValueError, match="maximum is 1800 s"):
        ours_generate(next_llm, chat_prompt(tiny_af_next), [make_clip(speech, 1800.5)])
