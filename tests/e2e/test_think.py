"""Thinking mode served next to the base model by the one engine of the session server (the
reference it is held to: tests/unit/test_think_reference.py)."""

import asyncio
from pathlib import Path

import numpy as np
import openai
import pytest

from af3_model_executor.constants import DEFAULT_SERVED_MODEL_NAME, THINK_MODEL_SUFFIX
from af3_model_executor.think_adapter import THINK_SUFFIX
from tests.support.audio_files import as_sent, audio_part, make_clip
from tests.support.oracles import (
    HFReference,
    HFThinkReference,
    answer_text,
    chat_prompt,
    reference_text,
)

MODEL = DEFAULT_SERVED_MODEL_NAME
THINK = MODEL + THINK_MODEL_SUFFIX
QUESTION = "What is said in the audio?"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def hf_base(tiny_checkpoint: Path) -> HFReference:
    return HFReference(tiny_checkpoint)


@pytest.fixture(scope="module")
def hf_think(tiny_checkpoint: Path) -> HFThinkReference:
    return HFThinkReference(tiny_checkpoint, tiny_checkpoint / "think")


@pytest.fixture(scope="module")
def clip(speech: np.ndarray) -> np.ndarray:
    return as_sent(make_clip(speech, 7.3))


def messages(clip: np.ndarray, text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [audio_part(clip), {"type": "text", "text": text}]}]


def expected_text(tiny_checkpoint: Path, reference: HFReference, clip, question: str) -> str:
    return reference_text(tiny_checkpoint, reference, clip, question, MAX_TOKENS)


def test_models_list_the_think_model_with_its_parent(client) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert list(models) == [MODEL, THINK]
    assert models[THINK].model_extra["parent"] == MODEL


def test_think_model_equals_transformers_with_peft_and_non_lora_weights(
    client, hf_think, tiny_checkpoint, clip
) -> None:
    reply = client.chat.completions.create(
        model=THINK, messages=messages(clip), max_tokens=MAX_TOKENS, temperature=0
    )
    # The server appends the suffix itself; the reference is asked with it written out.
    question = f"{QUESTION} {THINK_SUFFIX}"
    assert answer_text(reply.choices[0].message.content) == expected_text(
        tiny_checkpoint, hf_think, clip, question
    )
    reference_prompt = hf_think.prompt_token_ids(chat_prompt(tiny_checkpoint, question), clip)
    assert reply.usage.prompt_tokens == len(reference_prompt)


async def test_base_and_think_requests_share_the_engine_at_once(
    aclient, hf_base, hf_think, tiny_checkpoint, clip
) -> None:
    """Sent together (the session server admits two at a time), so both run in the same
    engine batches; each keeps its own answer."""
    base, think = await asyncio.gather(
        aclient.chat.completions.create(
            model=MODEL, messages=messages(clip), max_tokens=MAX_TOKENS, temperature=0
        ),
        aclient.chat.completions.create(
            model=THINK, messages=messages(clip), max_tokens=MAX_TOKENS, temperature=0
        ),
    )
    by_field = await aclient.chat.completions.create(
        model=MODEL,
        messages=messages(clip),
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"thinking": True},
    )
    assert answer_text(base.choices[0].message.content) == expected_text(
        tiny_checkpoint, hf_base, clip, QUESTION
    )
    assert answer_text(think.choices[0].message.content) == expected_text(
        tiny_checkpoint, hf_think, clip, f"{QUESTION} {THINK_SUFFIX}"
    )
    assert by_field.choices[0].message.content == think.choices[0].message.content
    assert base.choices[0].message.content != think.choices[0].message.content


def test_the_suffix_is_added_once(client, clip) -> None:
    plain = client.chat.completions.create(model=THINK, messages=messages(clip), max_tokens=1)
    written = client.chat.completions.create(
        model=THINK, messages=messages(clip, f"{QUESTION} {THINK_SUFFIX}"), max_tokens=1
    )
    assert written.usage.prompt_tokens == plain.usage.prompt_tokens


def test_thinking_false_with_the_think_model_is_refused(client, clip) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model=THINK, messages=messages(clip), max_tokens=1, extra_body={"thinking": False}
        )
    assert error.value.body["param"] == "thinking"
    assert MODEL in error.value.body["message"]


def test_transcription_refuses_the_think_model(client, speech_wav: Path) -> None:
    with pytest.raises(openai.BadRequestError) as error, speech_wav.open("rb") as f:
        client.audio.transcriptions.create(model=THINK, file=f)
    assert error.value.body["param"] == "model"
