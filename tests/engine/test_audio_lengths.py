"""Every audio length the model accepts is served with transformers' prompt tokens and
embeddings: a sweep around the shortest clip and the 30-s window boundaries (where a last
window of up to 320 samples yields no token) on vLLM's offline engine with our model, for
AF3 and Music Flamingo (rotary time embeddings); the engine keeps serving after each."""

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from vllm import SamplingParams

from af3_model_executor.audio_spec import AudioSpec
from af3_model_executor.constants import SAMPLE_RATE
from af3_model_executor.inspection import audio_embeddings
from tests.support.audio_lengths import clip_of, random_lengths, sweep_lengths
from tests.support.engine import offline_engine
from tests.support.oracles import HFReference, chat_prompt

pytestmark = pytest.mark.slow


@dataclass
class Served:
    checkpoint: Path
    llm: object
    hf: HFReference
    spec: AudioSpec


@pytest.fixture(scope="module")
def mf_llm(tiny_music_flamingo: Path):
    """Music Flamingo 2601 (1200 s: 30,002 audio tokens) in vLLM's offline engine."""
    engine = offline_engine(tiny_music_flamingo)
    yield engine
    del engine


@pytest.fixture(scope="module", params=["audio-flamingo-3", "music-flamingo-2601"])
def served(request) -> Served:
    if request.param == "audio-flamingo-3":
        checkpoint, llm = request.getfixturevalue("tiny_checkpoint"), request.getfixturevalue("llm")
    else:
        checkpoint = request.getfixturevalue("tiny_music_flamingo")
        llm = request.getfixturevalue("mf_llm")
    return Served(checkpoint, llm, HFReference(checkpoint), AudioSpec.from_pretrained(checkpoint))


def generate(served: Served, prompt: str, clip: np.ndarray) -> list[int]:
    (output,) = served.llm.generate(
        {"prompt": prompt, "multi_modal_data": {"audio": [(clip, SAMPLE_RATE)]}},
        SamplingParams(max_tokens=1, temperature=0),
    )
    assert len(output.outputs[0].token_ids) == 1
    return output.prompt_token_ids


def reference_clip(served: Served, clip: np.ndarray) -> np.ndarray:
    """The clip transformers' model can embed. transformers 5.19's MusicFlamingo fails on a
    last window that yields no token (IndexError in `_build_audio_timestamps`), which its
    own processor counts no placeholder for: its reference is the clip without that window,
    and the prompt tokens (from its processor, on the whole clip) check the count."""
    if not served.hf.rotary_time:
        return clip
    return clip[: served.spec.encoded_samples(clip.size)]


def test_the_sweep_is_served_as_transformers_serves_it(served: Served, speech) -> None:
    prompt = chat_prompt(served.checkpoint)
    lengths = sweep_lengths(served.spec)
    assert served.spec.max_samples in lengths and served.spec.min_samples in lengths
    wrong = []
    for n in lengths:
        clip = clip_of(speech, n)
        reference_ids = served.hf.prompt_token_ids(prompt, clip)
        if generate(served, prompt, clip) != reference_ids:
            wrong.append((n, "prompt tokens"))
        (ours,) = served.llm.apply_model(functools.partial(audio_embeddings, audios=[clip]))[0]
        reference = served.hf.embeddings(reference_clip(served, clip))
        if ours.shape != reference.shape or not torch.allclose(
            ours, reference, rtol=1e-4, atol=1e-4
        ):
            wrong.append((n, f"embeddings {tuple(ours.shape)} vs {tuple(reference.shape)}"))
    assert not wrong, wrong


def test_random_lengths_keep_the_engine_serving(served: Served, speech) -> None:
    """Forty random lengths up to three windows, half just past a boundary, in one batch."""
    prompt = chat_prompt(served.checkpoint)
    lengths = random_lengths(served.spec, 40, seed=21, max_windows=3)
    requests = [
        {"prompt": prompt, "multi_modal_data": {"audio": [(clip_of(speech, n), SAMPLE_RATE)]}}
        for n in lengths
    ]
    outputs = served.llm.generate(requests, SamplingParams(max_tokens=1, temperature=0))
    audio_token = served.hf.model.config.audio_token_id
    counts = [o.prompt_token_ids.count(audio_token) for o in outputs]
    assert counts == [served.spec.num_audio_tokens(n) for n in lengths]
    assert counts == [
        served.hf.prompt_token_ids(prompt, clip_of(speech, n)).count(audio_token) for n in lengths
    ]


def test_a_clip_under_one_token_is_refused_and_the_engine_serves_on(served: Served, speech):
    prompt = chat_prompt(served.checkpoint)
    with pytest.raises(ValueError, match=f"minimum is {served.spec.min_samples} samples"):
        generate(served, prompt, speech[: served.spec.min_samples - 1])
    with pytest.raises(ValueError, match=f"maximum is {served.spec.max_audio_seconds} s"):
        generate(served, prompt, clip_of(speech, served.spec.max_samples + 1))
    assert generate(served, prompt, clip_of(speech, served.spec.window_samples + 1))


def test_an_audio_cut_at_its_windows_is_served_as_the_whole(llm, tiny_checkpoint, speech):
    """An AF3 audio cut at `AudioSpec.window_cuts` (as a realtime conversation sends a long
    turn) is the whole to the model: the same prompt tokens, greedy answer and logprobs."""
    spec = AudioSpec.from_pretrained(tiny_checkpoint)
    window, params = spec.window_samples, SamplingParams(max_tokens=8, temperature=0, logprobs=3)
    # Two windows and 5 s; a rest of one token; a tokenless tail, left on the last clip.
    for n in (2 * window + 5 * SAMPLE_RATE, 2 * window + spec.min_samples, window + 100):
        clip = clip_of(speech, n)
        pieces = np.split(clip, spec.window_cuts(n))
        assert len(pieces) == -(-n // window) - (n % window < spec.min_samples)
        whole, cut = (
            llm.generate(
                {
                    "prompt": chat_prompt(tiny_checkpoint, num_audios=len(audios)),
                    "multi_modal_data": {"audio": [(a, SAMPLE_RATE) for a in audios]},
                },
                params,
            )[0]
            for audios in ([clip], pieces)
        )
        assert cut.prompt_token_ids == whole.prompt_token_ids
        assert cut.outputs[0].token_ids == whole.outputs[0].token_ids
        for ours, reference in zip(cut.outputs[0].logprobs, whole.outputs[0].logprobs, strict=True):
            assert ours.keys() == reference.keys()
            assert all(
                ours[t].logprob == pytest.approx(reference[t].logprob, abs=1e-4) for t in ours
            )
