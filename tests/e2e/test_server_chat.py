"""The chat endpoint through the official `openai` client against a real af3-serve."""

import base64
from pathlib import Path

import httpx
import librosa
import numpy as np
import pytest
from vllm import SamplingParams

from af3_model_executor.audio_spec import AudioSpec
from tests.support.audio_files import FORMATS, audio_part, b64, encode, make_clip
from tests.support.oracles import HFReference, chat_prompt

MODEL = "audio-flamingo-3"
QUESTION = "What is said in the audio?"


def user(audio: np.ndarray, fmt: str = "wav", text: str = QUESTION) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}, audio_part(audio, fmt)]}


def test_models_lists_the_served_models(client) -> None:
    # The session checkpoint has a thinking adapter (tests/e2e/test_think.py).
    assert [m.id for m in client.models.list().data] == [MODEL, f"{MODEL}-think"]


def test_chat_with_real_speech(client, speech) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[user(speech)], max_tokens=8, temperature=0
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    usage = reply.usage
    assert usage.completion_tokens == 8
    assert usage.prompt_tokens_details.audio_tokens == 750  # 30 s of speech
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_async_client_with_espeak_speech(aclient, espeak_wav: Path) -> None:
    audio, rate = librosa.load(espeak_wav, sr=None)  # espeak-ng speaks at 22.05 kHz
    assert rate != 16000
    part = {
        "type": "input_audio",
        "input_audio": {
            "data": base64.b64encode(espeak_wav.read_bytes()).decode(),
            "format": "wav",
        },
    }
    reply = await aclient.chat.completions.create(
        model=MODEL,
        max_tokens=4,
        temperature=0,
        messages=[{"role": "user", "content": [part, {"type": "text", "text": QUESTION}]}],
    )
    expected_tokens = AudioSpec().num_audio_tokens(
        len(librosa.resample(audio, orig_sr=rate, target_sr=16000))
    )
    assert reply.usage.prompt_tokens_details.audio_tokens == expected_tokens


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_audio_format(client, speech, fmt: str) -> None:
    clip = speech[: 16000 * 5]
    reply = client.chat.completions.create(
        model=MODEL, messages=[user(clip, fmt)], max_tokens=2, temperature=0
    )
    # Lossy codecs may pad a few ms; the token count stays that of ~5 s.
    assert abs(reply.usage.prompt_tokens_details.audio_tokens - 125) <= 2


def test_resampled_input(client, speech) -> None:
    audio_44k = librosa.resample(speech[: 16000 * 3], orig_sr=16000, target_sr=44100)
    reply = client.chat.completions.create(
        model=MODEL,
        max_tokens=2,
        messages=[
            {"role": "user", "content": [audio_part(audio_44k.astype(np.float32), "wav", 44100)]}
        ],
    )
    assert reply.usage.prompt_tokens_details.audio_tokens == 75


def test_two_audios_in_one_request(client, speech) -> None:
    first, second = make_clip(speech, 45.0), speech[: 16000 * 7]
    content = [audio_part(first), audio_part(second), {"type": "text", "text": "Compare them."}]
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=4, temperature=0
    )
    assert reply.usage.prompt_tokens_details.audio_tokens == 1125 + 175


def test_multi_turn_history(client, speech) -> None:
    messages = [
        {"role": "system", "content": "Answer briefly."},
        user(speech[: 16000 * 10]),
        {"role": "assistant", "content": "Two people are talking."},
        {"role": "user", "content": "What language do they speak?"},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    assert reply.choices[0].message.content is not None
    assert reply.usage.prompt_tokens_details.audio_tokens == 250


def test_streaming_with_usage_equals_non_streaming(client, speech) -> None:
    kwargs = dict(model=MODEL, messages=[user(speech[: 16000 * 12])], max_tokens=12, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert chunks[-1].choices == []
    usage, details = chunks[-1].usage, chunks[-1].usage.prompt_tokens_details
    assert usage.model_dump(exclude={"prompt_tokens_details"}) == whole.usage.model_dump(
        exclude={"prompt_tokens_details"}
    )
    assert details.audio_tokens == whole.usage.prompt_tokens_details.audio_tokens
    # The same prompt again: the stream reuses the first request's cached blocks.
    assert details.cached_tokens > 0


def test_http_greedy_output_equals_engine_output(client, llm, tiny_checkpoint, speech) -> None:
    clip = make_clip(speech, 61.0)
    reply = client.chat.completions.create(
        model=MODEL,
        max_tokens=16,
        temperature=0,
        messages=[
            {
                "role": "user",
                "content": [audio_part(clip, "flac"), {"type": "text", "text": QUESTION}],
            }
        ],
    )
    (offline,) = llm.generate(
        {
            "prompt": chat_prompt(tiny_checkpoint, QUESTION),
            "multi_modal_data": {"audio": [(clip, 16000)]},
        },
        SamplingParams(max_tokens=16, temperature=0),
    )
    assert reply.choices[0].message.content == offline.outputs[0].text
    assert reply.usage.prompt_tokens == len(offline.prompt_token_ids)


def test_prompt_tokens_match_the_checkpoint_chat_template(client, tiny_checkpoint, speech):
    clip = speech[: int(16000 * 7.3)]
    reply = client.chat.completions.create(
        model=MODEL,
        max_tokens=1,
        messages=[
            {"role": "user", "content": [audio_part(clip), {"type": "text", "text": QUESTION}]}
        ],
    )
    reference = HFReference(tiny_checkpoint)
    expected = reference.prompt_token_ids(chat_prompt(tiny_checkpoint, QUESTION), clip)
    assert reply.usage.prompt_tokens == len(expected)


def test_sampling_parameters(client, speech) -> None:
    sampling = dict(
        model=MODEL,
        messages=[user(speech[: 16000 * 3])],
        max_completion_tokens=5,
        n=2,
        temperature=1.0,
        top_p=0.9,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        stop=["\n\n"],
        extra_body={"top_k": 20, "repetition_penalty": 1.1},
    )
    reply = client.chat.completions.create(**sampling, logprobs=True, top_logprobs=2, user="tester")
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert len(choice.logprobs.content) <= 5
        assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    again = client.chat.completions.create(**sampling)  # same seed: same samples
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]


def test_audio_url_data_and_local_file(client, server, speech, media_dir: Path) -> None:
    clip = speech[: 16000 * 4]
    data_url = f"data:audio/wav;base64,{b64(clip)}"
    local = media_dir / "clip.flac"
    local.write_bytes(encode(clip, "flac"))
    for url in (data_url, local.as_uri()):
        reply = client.chat.completions.create(
            model=MODEL,
            max_tokens=2,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "audio_url", "audio_url": {"url": url}},
                        {"type": "text", "text": QUESTION},
                    ],
                }
            ],
        )
        assert reply.usage.prompt_tokens_details.audio_tokens == 100


def test_ten_minute_audio(client, speech) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[user(make_clip(speech, 600.0))], max_tokens=2, temperature=0
    )
    assert reply.usage.prompt_tokens_details.audio_tokens == 15000


def test_health_version_and_metrics(server, client, speech) -> None:
    client.chat.completions.create(model=MODEL, messages=[user(speech[:16000])], max_tokens=2)
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    version = httpx.get(f"{server.url}/version").json()
    assert version["model_class"] == "AF3ServeForConditionalGeneration"
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "vllm:num_requests_running",
        "vllm:prompt_tokens_total",
        "af3_audio_seconds_received_total",
        "af3_audio_decode_seconds_bucket",
        "af3_request_audio_duration_seconds_bucket",
        "af3_time_to_first_token_seconds",
    ):
        assert name in text, name
    received = [
        line for line in text.splitlines() if line.startswith("af3_audio_seconds_received_total")
    ]
    assert float(received[0].split()[-1]) > 1.0
