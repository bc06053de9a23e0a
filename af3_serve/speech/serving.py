"""Speech-to-text on AF3: the audio is cut into AF3's 30-s windows and each window is
transcribed as its own engine request, all of them batched concurrently by the engine, then
stitched in order, whole or streamed."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from vllm import SamplingParams
from vllm.outputs import CompletionOutput, RequestOutput

from af3_model_executor.constants import SAMPLE_RATE, WINDOW_SECONDS
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
from af3_serve.transcript_cleaner import TranscriptCleaner, clean

WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
# A last piece shorter than this rides with the previous window (AF3 takes any length).
MIN_TAIL_SAMPLES = SAMPLE_RATE
MAX_TOKENS_PER_WINDOW = 512


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


def windows(audio: np.ndarray) -> list[tuple[int, int]]:
    bounds = [
        (s, min(s + WINDOW_SAMPLES, audio.size)) for s in range(0, audio.size, WINDOW_SAMPLES)
    ]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_TAIL_SAMPLES:
        bounds[-2:] = [(bounds[-2][0], bounds[-1][1])]
    return bounds


@dataclass
class SpeechAnswer:
    """The window requests of one admitted speech request, collected or streamed."""

    served: ServedRequest
    bounds: list[tuple[int, int]]
    inputs: list[Any]
    params: SamplingParams
    audio_token_id: int
    request_id: str = field(default_factory=transcription_id)

    def _window_outputs(self) -> list[AsyncIterator[RequestOutput]]:
        return [
            self.served.generate(engine_input, self.params, f"{self.request_id}-{i}")
            for i, engine_input in enumerate(self.inputs)
        ]

    def usage(self, output_tokens: int) -> TranscriptionUsage:
        prompts = [e["prompt_token_ids"] for e in self.inputs]
        prompt_tokens = sum(len(p) for p in prompts)
        audio_tokens = sum(p.count(self.audio_token_id) for p in prompts)
        return TranscriptionUsage(
            input_tokens=prompt_tokens,
            output_tokens=output_tokens,
            total_tokens=prompt_tokens + output_tokens,
            input_token_details=InputTokenDetails(
                audio_tokens=audio_tokens, text_tokens=prompt_tokens - audio_tokens
            ),
        )

    async def segments(self) -> list[TranscriptionSegment]:
        finals = await asyncio.gather(*(_last(g) for g in self._window_outputs()))
        segments = []
        for i, ((a, b), out) in enumerate(zip(self.bounds, finals, strict=True)):
            o = out.outputs[0]
            logprobs = [lp[t].logprob for t, lp in zip(o.token_ids, o.logprobs or [], strict=False)]
            segments.append(
                TranscriptionSegment.of_window(
                    id=i,
                    start=round(a / SAMPLE_RATE, 3),
                    end=round(b / SAMPLE_RATE, 3),
                    text=clean(o.text),
                    tokens=list(o.token_ids),
                    temperature=self.params.temperature,
                    avg_logprob=sum(logprobs) / len(logprobs) if logprobs else 0.0,
                )
            )
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
        """Every window generates at once; text deltas go out in window order, each
        window's wrapper phrasing removed on the fly, then the whole text with its usage
        (also what a realtime session's turn sends)."""
        queues: list[asyncio.Queue[CompletionOutput | BaseException | None]] = [
            asyncio.Queue() for _ in self.inputs
        ]

        async def pump(outputs: AsyncIterator[RequestOutput], queue: asyncio.Queue) -> None:
            try:
                async for out in outputs:
                    await queue.put(out.outputs[0])
            except Exception as exc:  # e.g. the engine died: the consumer raises it
                await queue.put(exc)
            else:
                await queue.put(None)

        outputs = self._window_outputs()
        tasks = [asyncio.create_task(pump(o, q)) for o, q in zip(outputs, queues, strict=True)]
        pieces: list[str] = []
        output_tokens = 0
        try:
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
        finally:
            for task in tasks:
                task.cancel()  # cancelling a pump aborts its engine request


async def _last(outputs: AsyncIterator[RequestOutput]) -> RequestOutput:
    final = None
    async for out in outputs:
        final = out
    assert final is not None
    return final


def _delta(text: str, window_start: bool, after_previous: bool) -> str:
    return " " + text if window_start and after_previous else text
