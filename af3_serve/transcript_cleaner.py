"""AF3's wrapper phrasing around a transcript (`The spoken content of the audio is "..."`),
removed from a whole answer or while it streams. The speech endpoints clean their answers
with it; `af3-eval` cleans answers and references before scoring WER."""

# The phrasings AF3 opens a transcript with.
WRAPPERS = (
    "The spoken content of the audio is",
    "The transcription of the audio is",
    "The content of the input audio is",
)
_QUOTES = "\"'"


class TranscriptCleaner:
    """Streams text through, holding back only what may still be wrapper phrasing: the
    start until it cannot begin a wrapper, and the last two characters (a closing quote
    and period) until the end."""

    def __init__(self) -> None:
        self._head = ""  # undecided start of the text
        self._started = False
        self._wrapped = False
        self._tail = ""

    def feed(self, delta: str) -> str:
        if not self._started:
            self._head += delta
            text = self._head.lstrip()
            prefix = next((w for w in WRAPPERS if text.startswith(w)), None)
            if prefix is not None:
                rest = text[len(prefix) :].lstrip()
                if not rest:
                    return ""  # the opening quote may still come
                self._wrapped = True
                text = rest[1:] if rest[0] in _QUOTES else rest
            elif any(w.startswith(text) for w in WRAPPERS):
                return ""
            self._started = True
            delta = text
        self._tail += delta
        out, self._tail = self._tail[:-2], self._tail[-2:]
        return out

    def finish(self) -> str:
        tail = self._tail if self._started else self._head.strip()
        if self._wrapped:
            tail = tail.rstrip().removesuffix(".").rstrip().rstrip(_QUOTES)
        return tail


def clean(text: str) -> str:
    cleaner = TranscriptCleaner()
    return (cleaner.feed(text) + cleaner.finish()).strip()
