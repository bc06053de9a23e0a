"""One turn's transcription, started while the turn is still spoken. Past `FIRST_PIECE_S`
of buffered audio the session offers the turn so far every `PIECE_EVERY_S`; its finished
windows are transcribed at once, so a long turn's text arrives while the speaker talks and
its end waits only for its last window. At the commit the whole turn is planned as an
upload is (the same decode, voice regions and window plan): the finished windows are the
plan's first windows, checked sample for sample, and only the rest are transcribed, so the
transcript equals the REST transcription of the turn's audio.

Why the windows of a prefix are final: the decode, Silero's probabilities (by 60-s blocks
from the turn's start) and the window plan all read the audio forward, so only the turn's
last second may still change. The prefix is planned from its closed regions only (those
ending `OPEN_TAIL_S` before its end), and its last window is left for later."""

import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from fastapi import WebSocket
from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.exceptions import EngineDeadError

from af3_model_executor.constants import SAMPLE_RATE, WINDOW_SECONDS
from af3_serve import metrics
from af3_serve.admission import Ticket
from af3_serve.edge.errors import APIError
from af3_serve.realtime.protocol import (
    ENDPOINT,
    ErrorEvent,
    ServerEvent,
    Transcription,
    TranscriptionCompleted,
    TranscriptionDelta,
    TranscriptionFailed,
)
from af3_serve.runtime import Runtime
from af3_serve.serving import ServedRequest, engine_dead_error
from af3_serve.speech.protocol import TranscriptionTextDone
from af3_serve.speech.segmentation import Window, plan_windows
from af3_serve.speech.serving import MAX_TOKENS_PER_WINDOW, SpeechAnswer, instruction

logger = logging.getLogger(__name__)
FIRST_PIECE_S = WINDOW_SECONDS + 10  # a finished window needs the speech after it begun
PIECE_EVERY_S = 10.0
OPEN_TAIL_S = 1.0  # regions ending closer to a prefix's end may still grow


@dataclass
class Planned:
    """A plan of the turn so far: its 16-kHz PCM and the windows that are final."""

    pcm: np.ndarray
    windows: list[Window]


@dataclass
class TurnTranscript:
    """The transcription of the turn that will be committed as `item_id`: offered prefixes
    and then the whole turn, each handled in order by one task."""

    item_id: str
    settings: Transcription
    runtime: Runtime
    websocket: WebSocket  # the session's: admission reads its client's name
    send: Callable[[ServerEvent], Awaitable[None]]
    after: asyncio.Task | None = None  # the turn before: its events go first
    on_done: Callable[[str], None] | None = None  # told the whole transcript
    offered_s: float = 0.0  # the audio offered so far
    _queue: asyncio.Queue[tuple[bytes, bool]] = field(default_factory=asyncio.Queue)
    _done: list[Window] = field(default_factory=list)  # transcribed, in order
    _done_pcm: np.ndarray | None = None
    _texts: list[str] = field(default_factory=list)
    _usage: list[Any] = field(default_factory=list)
    _failed: BaseException | None = None  # an earlier part's engine failure
    _probs: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # whole VAD blocks

    def offer(self, audio: bytes, seconds: float) -> None:
        """The turn so far (a WAV file): its finished windows may be transcribed now."""
        self.offered_s = seconds
        self._queue.put_nowait((audio, False))

    def finish(self, audio: bytes) -> None:
        """The committed turn (a WAV file): the rest is transcribed, then `.completed`."""
        self._queue.put_nowait((audio, True))

    async def run(self) -> None:
        """Until the turn is finished (or the session drops it). Each part is planned in
        turn, and its windows go to the engine at once, beside the earlier parts' windows;
        only their events wait for those of the parts before them."""
        outcome = "failed"
        parts: list[asyncio.Task] = []
        try:
            while True:
                audio, final = await self._queue.get()
                while not final and not self._queue.empty():
                    audio, final = self._queue.get_nowait()  # only the newest prefix counts
                served = ServedRequest(self.runtime, self.websocket, ENDPOINT)
                try:
                    planned = await served.prepare(partial(self._plan, audio, final))
                except APIError:
                    if final:
                        raise
                    continue  # a piece refused (the server busy): the commit will do it
                if not self._same_start(planned):
                    # Not expected (see the module's doc): the turn is transcribed again
                    # from its start, so its transcript still equals REST's.
                    logger.warning("realtime turn %s: its finished windows changed", self.item_id)
                    await asyncio.gather(*parts, return_exceptions=True)
                    self._done, self._texts, self._usage, self._probs = [], [], [], {}
                first = len(self._done)
                gate = parts[-1] if parts else self.after
                self._done, self._done_pcm = planned.windows, planned.pcm
                if first == len(planned.windows) and not final:
                    served.release()  # no window finished since the last part
                    continue
                work = self._transcribe(served, planned, first, final, gate)
                parts.append(asyncio.create_task(work))
                if final:
                    await parts[-1]
                    break
            outcome = "completed"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except (APIError, EngineDeadError) as exc:
            error = exc if isinstance(exc, APIError) else engine_dead_error()
            detail = ErrorEvent.of(error).error
            await _after(parts[-1] if parts else self.after)
            await self.send(TranscriptionFailed(item_id=self.item_id, error=detail))
        finally:
            for part in parts:
                part.cancel()  # a turn dropped or failed: its windows leave the engine
                failed = part.exception() if part.done() and not part.cancelled() else None
                if failed is not None and not isinstance(failed, APIError | EngineDeadError):
                    logger.error("realtime turn %s: a part failed", self.item_id, exc_info=failed)
            metrics.REALTIME_TURNS.labels("transcription", outcome).inc()

    async def _plan(self, audio: bytes, final: bool, ticket: Ticket) -> Planned:
        inputs = self.runtime.inputs
        # As an upload to the transcription endpoint: 16-bit PCM, cut at its pauses.
        pcm = await inputs.decode_transcription(io.BytesIO(audio), "audio", ticket)
        regions = await inputs.voice.regions(pcm, self._probs)
        if not final:
            tail = pcm.size - int(OPEN_TAIL_S * SAMPLE_RATE)
            regions = [r for r in regions if r[1] <= tail]
        windows = await inputs.off_loop(plan_windows, pcm, regions)
        if not final:
            windows = windows[:-1]  # the speech after it may still widen its end
        else:
            metrics.REQUEST_AUDIO_SECONDS.observe(pcm.size / SAMPLE_RATE)
        return Planned(pcm, windows)

    def _same_start(self, planned: Planned) -> bool:
        """The windows transcribed so far begin this plan, their samples unchanged."""
        pcm, done = planned.pcm, self._done
        if planned.windows[: len(done)] != done:
            return False
        old = self._done_pcm
        return all(
            old is not None and np.array_equal(pcm[w.start : w.end], old[w.start : w.end])
            for w in done
        )

    async def _transcribe(
        self,
        served: ServedRequest,
        planned: Planned,
        first: int,
        final: bool,
        gate: asyncio.Task | None,
    ) -> None:
        """The part's windows (from the turn's `first`); its events follow `gate`'s (the
        part, or the turn, before). A failed earlier part fails the turn at its end."""
        t = self.settings
        conversation = [
            {
                "role": "user",
                "content": [
                    {"type": "audio"},
                    {"type": "text", "text": instruction("transcribe", t.language, t.prompt)},
                ],
            }
        ]

        async def render(window: np.ndarray) -> Any:
            return await self.runtime.inputs.render(conversation, [window])

        params = SamplingParams(
            temperature=0.0,
            max_tokens=MAX_TOKENS_PER_WINDOW,
            logprobs=0,
            output_kind=RequestOutputKind.DELTA,
        )
        windows = planned.windows[first:]
        answer = SpeechAnswer(served, render, planned.pcm, windows, params, first_window=first)
        said = False
        try:
            async with contextlib.aclosing(answer.pieces()) as pieces:
                async for piece in pieces:
                    if isinstance(piece, TranscriptionTextDone):
                        await _after(gate)  # the parts' texts join in order
                        if piece.text:
                            self._texts.append(piece.text)
                        self._usage.append(piece.usage)
                    elif piece:
                        await _after(gate)
                        # Windows join with one space, across the parts as within one.
                        if not said and self._texts and not piece.startswith(" "):
                            piece = " " + piece
                        said = True
                        await self.send(TranscriptionDelta(item_id=self.item_id, delta=piece))
        except (APIError, EngineDeadError) as exc:
            if final:
                raise
            self._failed = exc
            return
        finally:
            served.release()
        if final:
            await _after(gate)
            if self._failed is not None:
                raise self._failed
            total = " ".join(self._texts)
            usage = self._total()
            if self.on_done is not None:
                self.on_done(total)
            await self.send(
                TranscriptionCompleted(item_id=self.item_id, transcript=total, usage=usage)
            )

    def _total(self) -> dict[str, Any]:
        usage = self._usage[0].model_copy(deep=True)
        for more in self._usage[1:]:
            usage.input_tokens += more.input_tokens
            usage.output_tokens += more.output_tokens
            usage.total_tokens += more.total_tokens
            details, extra = usage.input_token_details, more.input_token_details
            details.audio_tokens += extra.audio_tokens
            details.text_tokens += extra.text_tokens
        return usage.model_dump()


async def _after(gate: asyncio.Task | None) -> None:
    """Waits for the part (or turn) before to send all its events: a session's turns, and
    a turn's parts, are told in order though their engine work overlaps."""
    if gate is not None:
        await asyncio.wait([gate])
