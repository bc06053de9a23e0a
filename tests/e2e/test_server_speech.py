"""OpenAI's speech-to-text API through the official client against a real af3-serve: the
transcripts are what vLLM's offline engine gives for the same windows, prompts and greedy
decoding. The HTTP side (formats, windows, stream events, errors) is in
tests/http/test_http_speech.py and tests/http/test_speech_windows.py; the wrapper phrasing's
removal in tests/unit/test_transcript_cleaner.py."""

from pathlib import Path

import numpy as np
import openai
import pytest
from vllm import SamplingParams

from af3_serve.inputs.audio import AudioLimits, decode_pcm16
from af3_serve.speech.segmentation import speech_windows
from af3_serve.transcript_cleaner import clean
from tests.support.audio_files import as_sent, encode, make_clip
from tests.support.oracles import chat_prompt
from tests.support.server import API_KEY

MODEL = "audio-flamingo-3"
# What af3-serve asks AF3 for each window (af3_serve/speech/serving.py).
TRANSCRIBE = "Transcribe the input speech."
TRANSLATE = "Translate the input speech into English."
MAX_TOKENS_PER_WINDOW = 512


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def clip_75s(speech) -> np.ndarray:
    return make_clip(speech, 75.0)


@pytest.fixture(scope="module")
def wav_75s(clip_75s, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("speech") / "talk.wav"
    path.write_bytes(encode(clip_75s))
    return path


def as_decoded(path: Path) -> np.ndarray:
    """The 16-kHz samples af3-serve keeps of a file to transcribe: 16-bit PCM, resampled
    by soxr block by block as the server does."""
    with path.open("rb") as f:
        return decode_pcm16(f, AudioLimits(3600, 2**30), "file")


def engine_windows(llm, checkpoint: Path, audio: np.ndarray, instruction: str) -> list:
    """vLLM's offline engine on each of the server's windows (its plan at the pauses,
    checked against known pauses in tests/http/test_speech_windows.py), with the server's
    instruction, greedy: one RequestOutput per window."""
    pcm = audio if audio.dtype == np.int16 else np.rint(audio * 32768).astype(np.int16)
    prompt = chat_prompt(checkpoint, instruction)
    return llm.generate(
        [
            {"prompt": prompt, "multi_modal_data": {"audio": [(w.audio(pcm), 16000)]}}
            for w in speech_windows(pcm)
        ],
        SamplingParams(max_tokens=MAX_TOKENS_PER_WINDOW, temperature=0),
    )


def stitched(outputs: list) -> str:
    return " ".join(t for o in outputs if (t := clean(o.outputs[0].text)))


def test_transcription_json(client, llm, tiny_checkpoint, espeak_wav: Path) -> None:
    with espeak_wav.open("rb") as f:
        result = client.audio.transcriptions.create(model=MODEL, file=f, language="en")
    outputs = engine_windows(
        llm, tiny_checkpoint, as_decoded(espeak_wav), f"{TRANSCRIBE} The speech is in English."
    )
    assert result.text == stitched(outputs)
    assert result.usage.input_tokens == sum(len(o.prompt_token_ids) for o in outputs)
    assert result.usage.output_tokens == sum(len(o.outputs[0].token_ids) for o in outputs) > 0


def test_transcription_text(client, llm, tiny_checkpoint, espeak_wav: Path) -> None:
    with espeak_wav.open("rb") as f:
        result = client.audio.transcriptions.create(model=MODEL, file=f, response_format="text")
    outputs = engine_windows(llm, tiny_checkpoint, as_decoded(espeak_wav), TRANSCRIBE)
    assert result == stitched(outputs) + "\n"


def test_verbose_json_segments_are_the_engine_windows(
    client, llm, tiny_checkpoint, wav_75s: Path, clip_75s
) -> None:
    with wav_75s.open("rb") as f:
        result = client.audio.transcriptions.create(
            model=MODEL, file=f, response_format="verbose_json", prompt="A meeting."
        )
    assert result.duration == pytest.approx(75.0)
    pcm = np.rint(as_sent(clip_75s) * 32768).astype(np.int16)
    windows = [(w.start / 16000, w.end / 16000) for w in speech_windows(pcm)]
    assert len(windows) >= 3
    assert [(s.start, s.end) for s in result.segments] == [
        (pytest.approx(a, abs=1e-3), pytest.approx(b, abs=1e-3)) for a, b in windows
    ]
    outputs = engine_windows(
        llm, tiny_checkpoint, as_sent(clip_75s), f"{TRANSCRIBE} Context: A meeting."
    )
    assert [s.tokens for s in result.segments] == [list(o.outputs[0].token_ids) for o in outputs]
    assert [s.text for s in result.segments] == [clean(o.outputs[0].text) for o in outputs]
    assert result.text == " ".join(s.text for s in result.segments if s.text)
    assert all(s.tokens for s in result.segments)


def test_streaming_deltas_add_up_to_the_final_text(
    client, llm, tiny_checkpoint, wav_75s: Path, clip_75s
) -> None:
    with wav_75s.open("rb") as f:
        events = list(client.audio.transcriptions.create(model=MODEL, file=f, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert len(done) == 1 and events[-1] is done[0]
    assert "".join(deltas) == done[0].text
    with wav_75s.open("rb") as f:
        whole = client.audio.transcriptions.create(model=MODEL, file=f)
    assert done[0].text == whole.text  # greedy: the same transcript either way
    assert whole.text == stitched(
        engine_windows(llm, tiny_checkpoint, as_sent(clip_75s), TRANSCRIBE)
    )


def test_translation(client, llm, tiny_checkpoint, espeak_wav: Path) -> None:
    with espeak_wav.open("rb") as f:
        result = client.audio.translations.create(model=MODEL, file=f)
    outputs = engine_windows(llm, tiny_checkpoint, as_decoded(espeak_wav), TRANSLATE)
    assert result.text == stitched(outputs)
    with espeak_wav.open("rb") as f:
        verbose = client.audio.translations.create(
            model=MODEL, file=f, response_format="verbose_json"
        )
    assert verbose.language == "english"
    assert verbose.text == result.text
