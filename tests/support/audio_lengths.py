"""Audio lengths where a model could go wrong: around the shortest clip that yields a token
and around 30-s window boundaries, where a last window of a few samples yields none."""

import random
from pathlib import Path

import httpx
import numpy as np
import openai
from transformers import AutoProcessor

from af3_model_executor.audio_spec import AudioSpec
from tests.support.audio_files import as_sent, audio_part, encode, transcription_windows
from tests.support.oracles import chat_prompt
from tests.support.server import API_KEY

# Samples past (or before) a window boundary: a last window of 1..320 samples (under three
# mel frames) yields no audio token, 321 yields one.
BOUNDARY_OFFSETS = (-1, 0, 1, 80, 159, 160, 161, 319, 320, 321, 480, 1600)
# Around the first two boundaries every offset; around the 10-min ones and the family's
# longest audio a few samples before and after (their clips cost the references most).
SWEPT_WINDOWS = (1, 2)
LONG_WINDOWS = (19, 20)
LONG_OFFSETS = (-1, 0, 1, 320, 321, 1600)
# (windows, samples past them) a server answers with transformers' prompt-token counts.
SERVED_OFFSETS = ((1, 1), (1, 80), (1, 159), (1, 160), (1, 161), (1, 319), (1, 320))
SERVED_OFFSETS += ((1, 321), (1, 480), (1, 1600), (2, 1), (2, 161), (3, 160))


def sweep_lengths(spec: AudioSpec) -> list[int]:
    """Every accepted length of the sweep for a checkpoint: near the minimum, around the
    boundaries of SWEPT_WINDOWS windows and of the family's longest audio."""
    lengths = {spec.min_samples, spec.min_samples + 1, spec.min_samples + 159, spec.max_samples}
    for windows in SWEPT_WINDOWS:
        lengths.update(windows * spec.window_samples + offset for offset in BOUNDARY_OFFSETS)
    for windows in (*LONG_WINDOWS, spec.max_windows):
        lengths.update(windows * spec.window_samples + offset for offset in LONG_OFFSETS)
    return sorted(n for n in lengths if spec.length_error(n) is None)


def random_lengths(spec: AudioSpec, count: int, seed: int, max_windows: int = 2) -> list[int]:
    """Random clip lengths up to `max_windows` windows, half of them within 400 samples
    past a window boundary, where the tail yields no token or just one."""
    rng = random.Random(seed)
    lengths = []
    for i in range(count):
        if i % 2:
            windows = rng.randint(1, max_windows - 1)
            n = windows * spec.window_samples + rng.randint(1, 400)
        else:
            n = rng.randint(spec.min_samples, max_windows * spec.window_samples)
        lengths.append(n)
    return lengths


def clip_of(speech: np.ndarray, num_samples: int) -> np.ndarray:
    """`num_samples` of real speech, the sample repeated (and scaled per round)."""
    rounds = -(-num_samples // speech.size)
    tiled = np.concatenate([speech * (1.0 - 0.1 * (i % 5)) for i in range(rounds)])
    return np.ascontiguousarray(tiled[:num_samples], dtype=np.float32)


QUESTION = "What is said in the audio?"
TRANSCRIBE = "Transcribe the input speech."  # af3_serve/speech/serving.py's instruction


def served_prompt_tokens(
    client: openai.OpenAI, model: str, audio: np.ndarray, question: str = QUESTION
) -> int:
    """One chat request with `audio` (as WAV) and `question`: its prompt tokens."""
    reply = client.chat.completions.create(
        model=model,
        max_tokens=1,
        temperature=0,
        messages=[
            {"role": "user", "content": [audio_part(audio), {"type": "text", "text": question}]}
        ],
    )
    return reply.usage.prompt_tokens


def hf_prompt_tokens(processor, prompt: str, clip: np.ndarray) -> int:
    return processor(text=[prompt], audio=[clip], return_tensors="pt")["input_ids"].shape[1]


def check_clips_past_boundaries(
    client: openai.OpenAI, url: str, model: str, checkpoint: Path, speech: np.ndarray
) -> None:
    """Each SERVED_OFFSETS clip: answered with transformers' prompt-token count, and the
    server healthy after it."""
    spec = AudioSpec.from_pretrained(str(checkpoint))
    processor = AutoProcessor.from_pretrained(checkpoint)
    prompt = chat_prompt(checkpoint, QUESTION)
    answered, expected = [], []
    for windows, offset in SERVED_OFFSETS:
        clip = clip_of(speech, windows * spec.window_samples + offset)
        answered.append((served_prompt_tokens(client, model, clip), healthy(url)))
        expected.append((hf_prompt_tokens(processor, prompt, as_sent(clip)), True))
    assert answered == expected
    # 30 s + 320 samples yields as many audio tokens as 30 s + 1; + 321 one more.
    assert expected[6][0] == expected[0][0] and expected[7][0] == expected[0][0] + 1


def check_transcription_past_a_boundary(
    url: str, model: str, checkpoint: Path, speech: np.ndarray
) -> None:
    """60.005 s of speech transcribed (its last 80 samples would make a tokenless window of
    fixed 30-s cuts): each window of the server's plan at the pauses gets transformers' prompt
    tokens, none is over 30 s, and the server stays healthy."""
    spec = AudioSpec.from_pretrained(str(checkpoint))
    processor = AutoProcessor.from_pretrained(checkpoint)
    clip = as_sent(clip_of(speech, 2 * spec.window_samples + 80))
    usage = transcription_usage(url, API_KEY, model, clip)
    windows = transcription_windows(clip)
    assert all(w.size <= spec.window_samples for w in windows)
    prompt = chat_prompt(checkpoint, TRANSCRIBE)
    assert usage["input_tokens"] == sum(hf_prompt_tokens(processor, prompt, w) for w in windows)
    audio_tokens = sum(spec.num_audio_tokens(w.size) for w in windows)
    assert usage["input_token_details"]["audio_tokens"] == audio_tokens
    assert healthy(url)


def healthy(url: str) -> bool:
    return httpx.get(f"{url}/health", timeout=30).status_code == 200


def transcription_usage(url: str, api_key: str, model: str, audio: np.ndarray) -> dict:
    """A whole transcription of `audio`: its JSON answer (200 asserted)."""
    response = httpx.post(
        f"{url}/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {api_key}"},
        data={"model": model},
        files={"file": ("clip.wav", encode(audio))},
        timeout=600,
    )
    assert response.status_code == 200, response.text
    return response.json()["usage"]
