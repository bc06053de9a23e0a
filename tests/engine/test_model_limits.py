"""Audio the model cannot take is refused with a message naming the limit, and the
engine keeps serving."""

import os
import subprocess
import sys

import numpy as np
import pytest
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError

from af3_model_executor.audio_spec import AudioSpec
from af3_model_executor.constants import MAX_AUDIOS_PER_PROMPT, SAMPLE_RATE
from af3_model_executor.families import AF3
from tests.support.audio_files import make_clip
from tests.support.oracles import chat_prompt


def generate(llm, prompt: str, audio: np.ndarray) -> list[int]:
    (out,) = llm.generate(
        {"prompt": prompt, "multi_modal_data": {"audio": [(audio, SAMPLE_RATE)]}},
        SamplingParams(max_tokens=4, temperature=0),
    )
    return list(out.outputs[0].token_ids)


def test_audio_over_ten_minutes_is_refused(llm, tiny_checkpoint, speech) -> None:
    with pytest.raises(ValueError, match=f"maximum is {AF3.max_audio_seconds} s"):
        generate(llm, chat_prompt(tiny_checkpoint), make_clip(speech, AF3.max_audio_seconds + 0.5))


def test_audio_shorter_than_one_token_is_refused(llm, tiny_checkpoint, speech) -> None:
    with pytest.raises(ValueError, match=r"minimum is 321 samples"):
        generate(llm, chat_prompt(tiny_checkpoint), speech[:320])


def test_shortest_accepted_audio_gives_one_token(llm, tiny_checkpoint, speech) -> None:
    assert len(generate(llm, chat_prompt(tiny_checkpoint), speech[:321])) == 4


def test_more_audios_than_the_limit_are_refused(llm, tiny_checkpoint, speech) -> None:
    """The engine takes the API's 8 audios, each cut into as many clips as the longest audio
    has windows (a realtime conversation's, realtime/prefill.py): 8 x 20; one more is
    refused. (The API refuses a ninth audio itself: tests/http.)"""
    limit = MAX_AUDIOS_PER_PROMPT * AudioSpec.from_pretrained(tiny_checkpoint).max_clips
    prompt = chat_prompt(tiny_checkpoint, num_audios=limit + 1)
    clip = make_clip(speech, 1.0)
    with pytest.raises(VLLMValidationError, match=rf"At most {limit} audio"):
        llm.generate(
            {"prompt": prompt, "multi_modal_data": {"audio": [(clip, SAMPLE_RATE)] * (limit + 1)}},
            SamplingParams(max_tokens=1),
        )


def test_engine_still_serves_after_refusals(llm, tiny_checkpoint, speech) -> None:
    assert len(generate(llm, chat_prompt(tiny_checkpoint), make_clip(speech, 5.0))) == 4


def test_no_silent_fallback_without_our_plugin(tiny_checkpoint) -> None:
    """With our plugin not loaded, asking for our architecture fails loudly."""
    code = (
        "from vllm import LLM\n"
        "from af3_model_executor import HF_OVERRIDES\n"
        f"LLM({str(tiny_checkpoint)!r}, hf_overrides=HF_OVERRIDES, max_model_len=4096)\n"
    )
    env = {**os.environ, "VLLM_PLUGINS": "no-plugin-at-all"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode != 0
    assert "AF3ServeForConditionalGeneration" in result.stderr
