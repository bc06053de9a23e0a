"""A real af3-serve process on the tiny Music Flamingo 2601 checkpoint (MusicFlamingo, 1200 s,
its weights as transformers' save_pretrained writes them), driven by the `openai` client:
served under its own name, the chat answer and the transcript equal transformers' greedy
ones, af3-infer answers alike in-process and through it, and the checkpoint's limit is the
server's."""

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from af3_serve.speech.serving import MAX_TOKENS_PER_WINDOW
from af3_serve.transcript_cleaner import clean
from tests.support.audio_files import as_sent, audio_part, encode, make_clip, transcription_windows
from tests.support.audio_lengths import (
    check_clips_past_boundaries,
    check_transcription_past_a_boundary,
)
from tests.support.infer import infer, remote
from tests.support.oracles import HFReference, chat_prompt
from tests.support.server import API_KEY, Server, start_server

pytestmark = pytest.mark.slow

# The default name: the tiny checkpoint's folder is music-flamingo-2601-hf, as the hub's.
MODEL = "music-flamingo-2601"
QUESTION = "Describe the music in detail."
# What af3-serve asks each 30-s window for (af3_serve/speech/serving.py).
TRANSCRIBE = "Transcribe the input speech."


@pytest.fixture(scope="module")
def mf_server(tiny_music_flamingo: Path, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("music-flamingo") / "af3-serve.log"
    server = start_server(tiny_music_flamingo, log)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mf_client(mf_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mf_server.url}/v1", api_key=API_KEY, max_retries=0)


def test_chat_completion_equals_transformers(mf_client, tiny_music_flamingo, speech) -> None:
    clip = make_clip(speech, 40.0)
    reply = mf_client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": [audio_part(clip), {"type": "text", "text": QUESTION}]}
        ],
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    hf = HFReference(tiny_music_flamingo)
    prompt = chat_prompt(tiny_music_flamingo, QUESTION)
    tokens = hf.generate(prompt, as_sent(clip), 12)
    text = hf.processor.tokenizer.decode(tokens, skip_special_tokens=True)
    assert reply.choices[0].message.content == text
    assert reply.usage.completion_tokens == len(tokens)
    assert reply.usage.prompt_tokens_details.audio_tokens == 1000
    first = reply.choices[0].logprobs.content[0]
    reference = hf.next_token_logprobs(prompt, as_sent(clip))
    assert first.logprob == pytest.approx(float(reference.max()), abs=1e-4)


def test_the_checkpoints_limit_is_the_servers(mf_client, speech) -> None:
    (card,) = mf_client.models.list().data
    assert card.id == MODEL and card.model_extra["max_audio_seconds"] == 1200
    too_long = audio_part(make_clip(speech, 1201.0), "flac")
    with pytest.raises(openai.APIStatusError) as refused:
        mf_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": [too_long]}], max_tokens=1
        )
    error = refused.value.body
    assert refused.value.status_code == 413 and error["code"] == "audio_too_long"
    assert "at most 1200 s" in error["message"] and MODEL in error["message"]


def test_transcription_is_the_families_answer(mf_client, tiny_music_flamingo, speech) -> None:
    """The speech endpoints serve this family too: each window of the server's plan with the
    server's instruction in the checkpoint's chat template (audio between <|sound_bos|> and
    <|sound_eos|>). The first window's first tokens are transformers' greedy ones; its text
    is the chat endpoint's greedy answer to the same instruction (the same engine), cleaned
    as AF3's."""
    clip = make_clip(speech, 20.0)
    result = mf_client.audio.transcriptions.create(
        model=MODEL, file=("talk.wav", encode(clip)), response_format="verbose_json"
    )
    windows = transcription_windows(clip)
    assert len(result.segments) == len(windows) >= 1
    first, segment = windows[0], result.segments[0]
    hf = HFReference(tiny_music_flamingo)
    prompt = chat_prompt(tiny_music_flamingo, TRANSCRIBE)
    assert segment.tokens[:12] == hf.generate(prompt, first, 12)
    assert result.usage.model_extra["input_tokens"] == sum(
        len(hf.prompt_token_ids(prompt, w)) for w in windows
    )
    chat = mf_client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": [audio_part(first), {"type": "text", "text": TRANSCRIBE}]}
        ],
        max_tokens=MAX_TOKENS_PER_WINDOW,
        temperature=0,
    )
    assert chat.usage.completion_tokens == len(segment.tokens)
    assert segment.text == clean(chat.choices[0].message.content)


def test_af3_infer_in_process_equals_the_server(mf_server, tiny_music_flamingo, espeak_wav) -> None:
    """af3-infer on this family: in-process (our model in vLLM's offline engine) and against
    the server, whose model name it reads from /v1/models: the same greedy answer."""
    common = ["--audio", str(espeak_wav), "--max-tokens", "6", "--json"]
    local = infer("--model", str(tiny_music_flamingo), *common, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    served = remote(mf_server, *common)
    assert served.returncode == 0, served.stderr[-3000:]
    out = json.loads(local.stdout)
    assert out == json.loads(served.stdout)
    assert out["usage"]["completion_tokens"] == 6 and out["usage"]["audio_tokens"] > 0


def test_clips_and_a_transcription_just_past_window_boundaries(
    mf_client, mf_server, tiny_music_flamingo, speech
) -> None:
    """As tests/e2e/test_server_audio_lengths.py for AF3: transformers' prompt-token counts
    (with <|sound_bos|>/<|sound_eos|>), the server healthy throughout."""
    check_clips_past_boundaries(mf_client, mf_server.url, MODEL, tiny_music_flamingo, speech)
    check_transcription_past_a_boundary(mf_server.url, MODEL, tiny_music_flamingo, speech)
