"""Our AF3 in vLLM against HF transformers and vLLM's built-in AF3, same weights."""

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from vllm import SamplingParams

from af3_model_executor import ARCHITECTURE
from af3_model_executor.constants import SAMPLE_RATE
from af3_model_executor.families import AF3
from af3_model_executor.inspection import audio_embeddings, model_class_name
from tests.support.audio_files import make_clip
from tests.support.oracles import HFReference, builtin_vllm_generate, chat_prompt

CLIP_SECONDS = [1.0, 7.3, 30.0, 45.0, 61.0, float(AF3.max_audio_seconds)]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def hf(tiny_checkpoint: Path) -> HFReference:
    return HFReference(tiny_checkpoint)


def ours_embeddings(llm, audios: list[np.ndarray]) -> list[torch.Tensor]:
    return llm.apply_model(functools.partial(audio_embeddings, audios=audios))[0]


def ours_generate(llm, prompt: str, audio_lists: list[list[np.ndarray]]) -> list[list[int]]:
    requests = [
        {"prompt": prompt, "multi_modal_data": {"audio": [(a, SAMPLE_RATE) for a in audios]}}
        for audios in audio_lists
    ]
    outputs = llm.generate(requests, SamplingParams(max_tokens=MAX_TOKENS, temperature=0))
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_requests_are_served_by_our_class(llm) -> None:
    assert llm.apply_model(model_class_name) == [ARCHITECTURE]


@pytest.mark.parametrize("seconds", CLIP_SECONDS)
def test_audio_embeddings_match_transformers(llm, hf, speech, seconds) -> None:
    clip = make_clip(speech, seconds)
    (ours,) = ours_embeddings(llm, [clip])
    reference = hf.embeddings(clip)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seconds", [7.3, 61.0])
def test_placeholder_count_and_prompt_match_transformers(llm, hf, tiny_checkpoint, speech, seconds):
    clip = make_clip(speech, seconds)
    prompt = chat_prompt(tiny_checkpoint)
    (output,) = llm.generate(
        {"prompt": prompt, "multi_modal_data": {"audio": [(clip, SAMPLE_RATE)]}},
        SamplingParams(max_tokens=1, temperature=0),
    )
    assert output.prompt_token_ids == hf.prompt_token_ids(prompt, clip)


def test_greedy_generation_matches_transformers_and_builtin_vllm(
    llm, hf, tiny_checkpoint, speech, tmp_path
) -> None:
    clips = [make_clip(speech, s) for s in (7.3, 30.0, 61.0)]
    prompt = chat_prompt(tiny_checkpoint)
    ours = ours_generate(llm, prompt, [[clip] for clip in clips])
    transformers_tokens = [hf.generate(prompt, clip, MAX_TOKENS) for clip in clips]
    builtin_tokens, builtin_class = builtin_vllm_generate(
        tiny_checkpoint, prompt, clips, MAX_TOKENS, tmp_path
    )
    assert builtin_class == "AudioFlamingo3ForConditionalGeneration"
    assert ours == transformers_tokens
    assert ours == builtin_tokens
    # The audio matters: different clips give different answers.
    assert len({tuple(t) for t in ours}) == len(clips)


def test_two_audios_in_one_prompt_get_their_own_embeddings(llm, speech) -> None:
    first, second = make_clip(speech, 45.0), make_clip(speech[::-1].copy(), 7.3)
    together = ours_embeddings(llm, [first, second])
    alone = [ours_embeddings(llm, [clip])[0] for clip in (first, second)]
    for joint, single in zip(together, alone, strict=True):
        torch.testing.assert_close(joint, single, rtol=1e-5, atol=1e-5)


def test_two_audio_prompt_generates(llm, tiny_checkpoint, speech) -> None:
    prompt = chat_prompt(tiny_checkpoint, num_audios=2)
    clips = [make_clip(speech, 45.0), make_clip(speech, 7.3)]
    (tokens,) = ours_generate(llm, prompt, [clips])
    assert len(tokens) == MAX_TOKENS


def test_batch_gives_the_same_tokens_as_each_request_alone(llm, tiny_checkpoint, speech) -> None:
    prompt = chat_prompt(tiny_checkpoint)
    clips = [make_clip(np.roll(speech, 1000 * i), s) for i, s in enumerate((3.0, 30.0, 45.0, 90.0))]
    batched = ours_generate(llm, prompt, [[clip] for clip in clips])
    alone = [ours_generate(llm, prompt, [[clip]])[0] for clip in clips]
    assert batched == alone
