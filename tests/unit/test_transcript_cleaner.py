"""AF3's wrapper phrasing around a transcript ("The spoken content of the audio is ...")
removed, whole answers and streamed ones alike."""

import pytest

from af3_serve.transcript_cleaner import TranscriptCleaner, clean


@pytest.mark.parametrize(
    ("answer", "transcript"),
    [
        ('The spoken content of the audio is "Hello there."', "Hello there."),
        ("The transcription of the audio is 'good morning'.", "good morning"),
        ("Plain words, no wrapper.", "Plain words, no wrapper."),
        ("The cat sat.", "The cat sat."),
    ],
)
def test_wrapper_phrasing_is_removed(answer: str, transcript: str) -> None:
    assert clean(answer) == transcript


@pytest.mark.parametrize("size", [1, 3, 7])
def test_wrapper_removal_is_the_same_when_streamed(size: int) -> None:
    for answer in ('The spoken content of the audio is "Hello there."', "The cat sat."):
        cleaner = TranscriptCleaner()
        pieces = [cleaner.feed(answer[i : i + size]) for i in range(0, len(answer), size)]
        assert ("".join(pieces) + cleaner.finish()).strip() == clean(answer)
