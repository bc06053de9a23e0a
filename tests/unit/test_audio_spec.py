"""Our audio token counts against transformers' processors, without an engine: every length
of the sweep and random ones, AF3 and MusicFlamingo, and the windows the encoder runs."""

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from af3_model_executor.audio_features import LogMel
from af3_model_executor.audio_spec import AudioSpec, tokens_after_pooling
from af3_model_executor.constants import AUDIO_TOKEN
from tests.support.audio_lengths import random_lengths, sweep_lengths


@pytest.fixture(scope="module", params=["tiny_checkpoint", "tiny_music_flamingo"])
def checkpoint(request):
    return request.getfixturevalue(request.param)


def hf_audio_tokens(processor, num_samples: int, audio_token_id: int) -> int:
    audio = np.zeros(num_samples, np.float32)
    inputs = processor(text=[AUDIO_TOKEN], audio=[audio], return_tensors="pt")
    return int((inputs["input_ids"][0] == audio_token_id).sum())


def test_token_counts_equal_transformers(checkpoint) -> None:
    spec = AudioSpec.from_pretrained(str(checkpoint))
    processor = AutoProcessor.from_pretrained(checkpoint)
    token_id = processor.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    # The feature extractor's cost grows with the length: the first two boundaries here, the
    # longer ones on the engine (tests/engine/test_audio_lengths.py).
    lengths = [n for n in sweep_lengths(spec) if n <= 2 * spec.window_samples + 1600]
    lengths += random_lengths(spec, 8, seed=0, max_windows=3)
    ours = [spec.num_audio_tokens(n) for n in lengths]
    assert ours == [hf_audio_tokens(processor, n, token_id) for n in lengths]


def test_a_last_window_under_three_frames_is_not_encoded() -> None:
    spec = AudioSpec()
    window = spec.window_samples
    assert spec.window_frame_counts(window + 320) == [3000]
    assert spec.window_frame_counts(window + 321) == [3000, 3]
    assert spec.num_audio_tokens(window + 320) == 750
    assert spec.num_audio_tokens(window + 321) == 751
    assert spec.encoded_samples(window + 320) == window
    # HF's formula over the summed mask of all windows, the dropped ones included.
    for n in range(window - 2, window + 2000, 7):
        frames = [-(-min(window, n - s) // spec.hop_length) for s in range(0, n, window)]
        assert spec.num_audio_tokens(n) == tokens_after_pooling(sum(frames)), n
    windows, frame_counts = LogMel(spec).split_windows([torch.ones(2 * window + 5)])
    assert windows.shape == (2, window) and frame_counts == [3000, 3000]


def test_the_length_limits_are_named() -> None:
    spec = AudioSpec()
    assert spec.length_error(spec.min_samples) is None
    assert spec.length_error(spec.max_samples) is None
    short = spec.length_error(spec.min_samples - 1)
    assert short.code == "audio_too_short" and "minimum is 321 samples" in str(short)
    long = spec.length_error(spec.max_samples + 1)
    assert long.code == "audio_too_long" and "maximum is 600 s" in str(long)


def test_window_cuts() -> None:
    """AF3 clips are cut at 30-s boundaries that leave a token after them (the tokenless
    tail stays on the last clip, as the whole drops it); MusicFlamingo's never."""
    spec = AudioSpec()
    window, least = spec.window_samples, spec.min_samples
    assert spec.window_cuts(window) == []
    assert spec.window_cuts(window + least - 1) == []
    assert spec.window_cuts(window + least) == [window]
    assert spec.window_cuts(3 * window + 5) == [window, 2 * window]
    for n in random_lengths(spec, 20, seed=3, max_windows=5):
        pieces = np.split(np.zeros(n), spec.window_cuts(n))
        assert sum(spec.num_audio_tokens(p.size) for p in pieces) == spec.num_audio_tokens(n)
    assert AudioSpec(audio_span_tokens=True).window_cuts(3 * window) == []
    # The engine's audios per prompt are the API's times this (engine.py).
    assert [AudioSpec().limited(s).max_clips for s in (None, 20, 45, 60.5)] == [20, 1, 2, 3]
