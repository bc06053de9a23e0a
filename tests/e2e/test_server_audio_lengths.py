"""A real af3-serve answers every length a load test may send by chance, with transformers'
prompt-token counts and its health intact: clips a few samples past 30-s window boundaries
(whose last window yields no audio token or one), a transcription ending that way, and
random lengths. The same for Music Flamingo in tests/e2e/test_musicflamingo_server.py."""

from af3_model_executor.audio_spec import AudioSpec
from tests.support.audio_lengths import (
    check_clips_past_boundaries,
    check_transcription_past_a_boundary,
    clip_of,
    healthy,
    random_lengths,
    served_prompt_tokens,
)

MODEL = "audio-flamingo-3"


def test_clips_just_past_window_boundaries(client, server, tiny_checkpoint, speech) -> None:
    check_clips_past_boundaries(client, server.url, MODEL, tiny_checkpoint, speech)


def test_a_transcription_ending_just_past_a_boundary(server, tiny_checkpoint, speech) -> None:
    check_transcription_past_a_boundary(server.url, MODEL, tiny_checkpoint, speech)


def test_random_lengths_keep_the_server(client, server, tiny_checkpoint, speech) -> None:
    spec = AudioSpec.from_pretrained(str(tiny_checkpoint))
    for n in random_lengths(spec, 12, seed=7, max_windows=3):
        served_prompt_tokens(client, MODEL, clip_of(speech, n))
        assert healthy(server.url), n
