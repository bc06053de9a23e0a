"""Speech-to-text on AF3: the recording's speech is cut into windows of at most 30 s at its
pauses (`segmentation.py`), and each window is transcribed as its own engine request, a
bounded number at a time per request (`--transcription-windows-in-flight`) and in order, so
hours of audio neither flood the engine nor hold more than that many windows' float PCM;
the answers are stitched in order, whole or streamed."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from vllm import SamplingParams
from vllm.outputs import CompletionOutput

from af3_model_executor.constants import SAMPLE_RATE
from af3_serve.serving import ServedRequest
from af3_serve.speech.protocol import (
    LANGUAGES,
    InputTokenDetails,
    Task,
    TranscriptionSegment,
    TranscriptionTextDelta,
    TranscriptionTextDone,
    TranscriptionUsage,
    transcription_id,
)
from af3_serve.speech.segmentation import Window
from af3_serve.transcript_cleaner import TranscriptCleaner, clean

MAX_TOKENS_PER_WINDOW = 512

# What a window's queue carries: its outputs, then None; or the error that ended it.
Item = CompletionOutput | BaseException | None


def instruction(task: Task, language: str | None, prompt: str | None) -> str:
    """AF3's own instruction, with the language (one of `LANGUAGES`, checked with the form)
    and the caller's prompt folded in."""
    if task == "translate":
        text = "Translate the input speech into English."
    else:
        text = "Transcribe the input speech."
    if language:
        text += f" The speech is in {LANGUAGES[language]}."
    if prompt:
        text += f" Context: {prompt.strip()}"
    return text


@dataclass
class SpeechAnswer:
    """The window requests of one admitted speech request, collected or streamed. A window's
    prompt is rendered only when it gets its turn in the engine."""

    served: ServedRequest
    render: Callable[[np.ndarray], Awaitable[Any]]  # window PCM -> engine input
    pcm: np.ndarray  # the recording, 16-kHz int16
    windows: list[Window]
    params: SamplingParams
    request_id: str = field(default_factory=transcription_id)
    first_window: int = 0  # the number of `windows[0]` (a realtime turn's later windows)
    prompt_tokens: int = 0
    audio_tokens: int = 0

    async def _window(self, i: int, slots: asyncio.Semaphore, queue: asyncio.Queue) -> None:
        try:
            async with slots:  # FIFO: windows enter the engine in order
                engine_input = await self.render(self.windows[i].audio(self.pcm))
                prompt = engine_input["prompt_token_ids"]
                self.prompt_tokens += len(prompt)
                self.audio_tokens += prompt.count(self.served.runtime.audio_token_id)
                request_id = f"{self.request_id}-{self.first_window + i}"
                outputs = self.served.generate(engine_input, self.params, request_id)
                async with contextlib.aclosing(outputs):  # closing aborts it in the engine
                    async for out in outputs:
                        queue.put_nowait(out.outputs[0])
        except Exception as exc:  # e.g. the engine died: the consumer raises it
            queue.put_nowait(exc)
        else:
            queue.put_nowait(None)

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[list[asyncio.Queue[Item]]]:
        """Every window's task, at most --transcription-windows-in-flight of them in the
        engine; leaving (an answer done, an error, a client gone) cancels the rest, which
        aborts their engine requests."""
        slots = asyncio.Semaphore(self.served.runtime.config.transcription_windows_in_flight)
        queues: list[asyncio.Queue[Item]] = [asyncio.Queue() for _ in self.windows]
        tasks = [asyncio.create_task(self._window(i, slots, q)) for i, q in enumerate(queues)]
        try:
            yield queues
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def usage(self, output_tokens: int) -> TranscriptionUsage:
        return TranscriptionUsage(
            input_tokens=self.prompt_tokens,
            output_tokens=output_tokens,
            total_tokens=self.prompt_tokens + output_tokens,
            input_token_details=InputTokenDetails(
                audio_tokens=self.audio_tokens, text_tokens=self.prompt_tokens - self.audio_tokens
            ),
        )

    def _segment(self, i: int, o: CompletionOutput) -> TranscriptionSegment:
        window = self.windows[i]
        logprobs = [lp[t].logprob for t, lp in zip(o.token_ids, o.logprobs or [], strict=False)]
        return TranscriptionSegment.of_window(
            id=i,
            start=round(window.start / SAMPLE_RATE, 3),
            end=round(window.end / SAMPLE_RATE, 3),
            text=clean(o.text),
            tokens=list(o.token_ids),
            temperature=self.params.temperature,
            avg_logprob=sum(logprobs) / len(logprobs) if logprobs else 0.0,
        )

    async def segments(self) -> list[TranscriptionSegment]:
        segments = []
        async with self._running() as queues:
            for i, queue in enumerate(queues):
                final = None
                while (o := await queue.get()) is not None:
                    if isinstance(o, BaseException):
                        raise o
                    final = o
                assert final is not None
                segments.append(self._segment(i, final))
        return segments

    async def events(self) -> AsyncIterator[str]:
        """The stream's events as JSON payloads for `ServedRequest.stream`."""
        # aclosing: a client that leaves stops the windows now, not when the GC runs.
        async with contextlib.aclosing(self.pieces()) as pieces:
            async for piece in pieces:
                if isinstance(piece, str):
                    yield TranscriptionTextDelta(delta=piece).model_dump_json()
                else:
                    yield piece.model_dump_json()

    async def pieces(self) -> AsyncIterator[str | TranscriptionTextDone]:
        """Text deltas in window order as soon as a window and those before it have them,
        each window's wrapper phrasing removed on the fly, then the whole text with its usage
        (also what a realtime session's turn sends)."""
        pieces: list[str] = []
        output_tokens = 0
        async with self._running() as queues:
            for queue in queues:
                cleaner, window_text, sent = TranscriptCleaner(), "", ""
                while (o := await queue.get()) is not None:
                    if isinstance(o, BaseException):
                        raise o
                    output_tokens += len(o.token_ids)
                    window_text += cleaner.feed(o.text)
                    # Trailing whitespace waits: windows join with one space, as in `text`.
                    if ready := window_text.strip()[len(sent) :]:
                        yield _delta(ready, window_start=not sent, after_previous=bool(pieces))
                        sent += ready
                window_text = (window_text + cleaner.finish()).strip()
                if rest := window_text[len(sent) :]:
                    yield _delta(rest, window_start=not sent, after_previous=bool(pieces))
                if window_text:
                    pieces.append(window_text)
        yield TranscriptionTextDone(text=" ".join(pieces), usage=self.usage(output_tokens))


def _delta(text: str, window_start: bool, after_previous: bool) -> str:
    return " " + text if window_start and after_previous else text
