"""One /v1/realtime session: its settings, input audio buffer and conversation, and the
engine work of its turns. Each client event is handled in order; a committed turn's
transcription and a response run as tasks beside the socket, along `serving.py`'s path
(admission, the engine, abort), so a socket that drops cancels them at once."""

import asyncio
import base64
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fastapi import WebSocket
from pydantic import BaseModel, ValidationError
from vllm.v1.engine.exceptions import EngineDeadError

from af3_serve import metrics
from af3_serve.chat.protocol import ChatCompletionRequest
from af3_serve.chat.serving import prepare_chat
from af3_serve.chat.setup import ChatSetup
from af3_serve.edge.errors import APIError
from af3_serve.inputs.media import b64decode
from af3_serve.realtime.audio import (
    MIN_COMMIT_SECONDS,
    WAV_HEADER_BYTES,
    AudioBuffer,
    InputFormat,
    wav,
)
from af3_serve.realtime.prefill import decoded_clips, finished_windows
from af3_serve.realtime.protocol import (
    ENDPOINT,
    AudioAppend,
    BufferEvent,
    ClientEvent,
    ContentPart,
    ContentPartEvent,
    ErrorEvent,
    Item,
    ItemContent,
    ItemCreate,
    ItemDeleted,
    ItemEvent,
    ItemReference,
    ItemRetrieved,
    OutputItemEvent,
    Part,
    Response,
    ResponseCancel,
    ResponseCreate,
    ResponseEvent,
    ResponseUsage,
    ServerEvent,
    SessionEvent,
    SessionUpdate,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextDone,
    Transcription,
    TurnDetection,
    new_id,
)
from af3_serve.realtime.transcript import FIRST_PIECE_S, PIECE_EVERY_S, TurnTranscript
from af3_serve.realtime.turns import ServerVad, SpeechBoundary, turn_detector
from af3_serve.runtime import Runtime
from af3_serve.serving import engine_dead_error
from af3_serve.speech.protocol import LANGUAGES

logger = logging.getLogger(__name__)

# Larger client events are refused with an error event (below uvicorn's 16 MiB frame cap,
# which would close the socket instead): 8 MiB of base64 is ~2 min of 24-kHz PCM.
MAX_EVENT_BYTES = 8 * 2**20


def _invalid(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class ConversationItem:
    """One item of a conversation session: text and audio (a WAV file) in order."""

    id: str
    role: str
    parts: list[tuple[str, str | bytes]]  # ("text", str) or ("audio", wav bytes)
    transcript: str | None = None
    clips: dict[int, list[str]] = field(default_factory=dict)  # each audio part's, as sent

    def shown(self, audio: bool = False) -> Item:
        """The item as OpenAI shows it; `audio`: with its audio (16-bit PCM, base64)."""
        content = []
        for _, value in self.parts:
            if isinstance(value, bytes):
                pcm = base64.b64encode(value[WAV_HEADER_BYTES:]).decode() if audio else None
                content.append(
                    ItemContent(type="input_audio", transcript=self.transcript, audio=pcm)
                )
            else:
                text_type = "output_text" if self.role == "assistant" else "input_text"
                content.append(ItemContent(type=text_type, text=value))
        return Item(id=self.id, role=self.role, content=content)  # type: ignore[arg-type]


@dataclass
class Settings:
    type: str  # "realtime" or "transcription"
    model: str  # a served model; `-think` answers in thinking mode, as on chat
    instructions: str | None = None
    max_output_tokens: int | str = "inf"
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None  # None: the client commits
    detector: ServerVad | None = None


class RealtimeSession:
    def __init__(
        self,
        websocket: WebSocket,
        runtime: Runtime,
        chat: ChatSetup,
        kind: str,
        model: str,
    ) -> None:
        self.ws = websocket
        self.runtime = runtime
        self.chat = chat
        self.id = new_id("sess")
        transcription = Transcription(model=model) if kind == "transcription" else None
        self.settings = Settings(kind, model, transcription=transcription)
        max_seconds = min(
            runtime.config.max_realtime_buffer_seconds, runtime.inputs.max_audio_seconds
        )
        self.buffer = AudioBuffer(max_seconds)
        self.items: list[ConversationItem] = []
        self.last_item_id: str | None = None
        self.next_item_id: str | None = None  # named when a detector hears speech start
        # The turn being spoken, when its transcription has begun before its commit, and
        # the last committed turn's transcription (the next one's events wait for it).
        self.turn: tuple[TurnTranscript, asyncio.Task] | None = None
        self.last_turn: asyncio.Task | None = None
        # A conversation turn's windows prefilled while it is spoken (prefill.py), and the
        # prefill under way.
        self.prefilled = 0
        self.prefill: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()
        self.response: tuple[str, asyncio.Task] | None = None
        # What the session did, for its access-log line: turns, audio_seconds, responses,
        # errors.
        self.counts: Counter[str] = Counter()
        self.closed = False
        self._send_lock = asyncio.Lock()

    # Sending --------------------------------------------------------------------------

    async def send(self, event: ServerEvent) -> None:
        if self.closed:
            return
        if isinstance(event, ErrorEvent):
            self.counts["errors"] += 1
            metrics.REALTIME_ERRORS.labels(event.error.code or "error").inc()
        async with self._send_lock:
            with contextlib.suppress(Exception):  # a socket gone mid-send: the reader sees it
                await self.ws.send_text(event.model_dump_json())

    async def error(self, exc: APIError, event_id: str | None = None) -> None:
        await self.send(ErrorEvent.of(exc, event_id))

    def describe(self) -> dict[str, Any]:
        s = self.settings
        audio_input = {
            "format": self.buffer.format.describe(),
            "transcription": s.transcription.model_dump() if s.transcription else None,
            "turn_detection": s.turn_detection.model_dump() if s.turn_detection else None,
        }
        if s.type == "transcription":
            return {
                "type": "transcription",
                "id": self.id,
                "object": "realtime.transcription_session",
                "audio": {"input": audio_input},
            }
        return {
            "type": "realtime",
            "id": self.id,
            "object": "realtime.session",
            "model": s.model,
            "output_modalities": ["text"],
            "instructions": s.instructions,
            "max_output_tokens": s.max_output_tokens,
            "audio": {"input": audio_input},
        }

    async def open(self) -> None:
        await self.send(SessionEvent(type="session.created", session=self.describe()))

    # Client events ------------------------------------------------------------------

    async def handle(self, raw: str | bytes) -> None:
        """One client event; anything wrong with it is an error event, never the end."""
        if len(raw) > MAX_EVENT_BYTES:
            await self.error(
                _invalid(
                    f"The event is {len(raw)} bytes; events may be at most {MAX_EVENT_BYTES}.",
                    code="event_too_large",
                )
            )
            return
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            await self.error(_invalid("The event is not valid JSON.", code="invalid_json"))
            return
        event_id = data.get("event_id") if isinstance(data, dict) else None
        event_id = event_id if isinstance(event_id, str) else None
        try:
            event = ClientEvent.model_validate(data)
            handler = self._handlers().get(event.type)
            if handler is None:
                raise _invalid(f"Unknown or unsupported event type '{event.type}'.", param="type")
            model, method = handler
            await method(model.model_validate(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            await self.error(
                _invalid(f"Invalid event: {first['msg']}.", param=param, code="invalid_event"),
                event_id,
            )
        except APIError as exc:
            await self.error(exc, event_id)

    def _handlers(self) -> dict[str, tuple[type[BaseModel], Callable[[Any], Any]]]:
        return {
            "session.update": (SessionUpdate, self.update),
            "input_audio_buffer.append": (AudioAppend, self.append),
            "input_audio_buffer.commit": (ClientEvent, self.commit),
            "input_audio_buffer.clear": (ClientEvent, self.clear),
            "conversation.item.create": (ItemCreate, self.create_item),
            "response.create": (ResponseCreate, self.create_response),
            "response.cancel": (ResponseCancel, self.cancel_response),
            "conversation.item.delete": (ItemReference, self.delete_item),
            "conversation.item.retrieve": (ItemReference, self.retrieve_item),
            "conversation.item.truncate": (ItemReference, self.truncate_item),
        }

    async def update(self, event: SessionUpdate) -> None:
        """Checks every field first: a refused update changes nothing."""
        new = event.session
        s = self.settings
        kind = new.type or s.type
        model = s.model
        if new.model is not None:
            self.runtime.models.is_think(new.model)  # refuses a model we do not serve
            model = new.model
        if new.output_modalities and "audio" in new.output_modalities:
            raise _audio_output_refused("session.output_modalities")
        audio_input = new.audio.input if new.audio else None
        fmt = self.buffer.format
        transcription = s.transcription
        detection, detector = s.turn_detection, s.detector
        if audio_input is not None:
            if audio_input.format is not None:
                fmt = InputFormat.of(audio_input.format)
                if fmt != self.buffer.format and self.buffer.size:
                    raise _invalid(
                        "The input audio format cannot change while the buffer holds audio; "
                        "commit or clear it first.",
                        param="session.audio.input.format",
                    )
            if "transcription" in audio_input.model_fields_set:
                transcription = audio_input.transcription
                if transcription is not None:
                    self._check_transcription(transcription)
            if "turn_detection" in audio_input.model_fields_set:
                detection = audio_input.turn_detection
                detector = turn_detector(detection, self.buffer.end_ms)
        if kind == "transcription" and transcription is None:
            transcription = Transcription(model=self.runtime.models.base)
        s.type, s.model, s.transcription = kind, model, transcription
        s.turn_detection, s.detector = detection, detector
        self.buffer.format = fmt
        if new.instructions is not None:
            s.instructions = new.instructions
        if new.max_output_tokens is not None:
            s.max_output_tokens = new.max_output_tokens
        await self.send(SessionEvent(type="session.updated", session=self.describe()))

    def _check_transcription(self, t: Transcription) -> None:
        param = "session.audio.input.transcription"
        if t.model is not None and self.runtime.models.is_think(t.model):
            raise _invalid(
                "Transcription uses the base model, not the thinking model.",
                param=param + ".model",
            )
        if t.language and t.language not in LANGUAGES:
            raise _invalid(
                f"Unsupported language '{t.language}'; use an ISO-639-1 code such as 'en'.",
                param=param + ".language",
            )

    async def append(self, event: AudioAppend) -> None:
        data = b64decode(event.audio, "audio")
        self.buffer.append(data)
        if (detector := self.settings.detector) is not None:
            fmt = self.buffer.format
            heard = await self.runtime.inputs.off_loop(
                detector.feed, fmt.pcm16(data), fmt.rate, live=True
            )
            for boundary in heard:
                await self._boundary(boundary)
            if not detector.speaking:  # between turns only the prefix padding is kept
                self.buffer.drop_before(self.buffer.end_ms - detector.config.prefix_padding_ms)
                return
        self._offer_turn()
        self._prefill_turn()

    def _offer_turn(self) -> None:
        """A long turn's finished windows are transcribed while it is still spoken."""
        seconds = self.buffer.seconds
        if self.settings.transcription is None or seconds < FIRST_PIECE_S:
            return
        if self.turn is None:
            self.turn = self._turn_transcript()
        if seconds - self.turn[0].offered_s >= PIECE_EVERY_S:
            self.turn[0].offer(self.buffer.peek(), seconds)

    def _turn_transcript(self) -> tuple[TurnTranscript, asyncio.Task]:
        self.next_item_id = self.next_item_id or new_id("item")
        transcription = self.settings.transcription or Transcription()
        turn = TurnTranscript(
            self.next_item_id, transcription, self.runtime, self.ws, self.send, self.last_turn
        )
        return turn, self._spawn(turn.run())

    def _prefill_turn(self) -> None:
        """A conversation turn's newly finished windows are prefilled (prefill.py)."""
        if self.settings.type != "realtime" or self._audios() >= self._max_audios:
            return
        if self._unprefilled() and (self.prefill is None or self.prefill.done()):
            self.prefill = self._spawn(self._prefill_windows(self.counts["turns"]))

    def _unprefilled(self) -> int:
        """The buffered turn's finished windows, when some are not prefilled yet."""
        windows = finished_windows(self.buffer.seconds, self.runtime.inputs.spec)
        return windows if windows > self.prefilled else 0

    async def _prefill_windows(self, turn: int) -> None:
        """One prefill at a time, each of every window finished by its start, until the
        turn's finished windows are all prefilled or the turn is committed."""
        while self.counts["turns"] == turn and (windows := self._unprefilled()):
            self.prefilled = windows
            await self._prefill(self.buffer.peek(), windows, turn)

    def _drop_turn(self) -> None:
        """The buffered turn is gone (cleared, or a new one began): so is its work."""
        if self.turn is not None:
            self.turn[1].cancel()
            self.turn = None
        if self.prefill is not None:
            self.prefill.cancel()
        self.prefilled = 0

    async def _boundary(self, boundary: SpeechBoundary) -> None:
        """What a turn detector heard: speech started (the turn's item is named), or
        stopped (the turn is committed, and answered when the detection says so)."""
        detection = self.settings.turn_detection
        assert detection is not None
        if boundary.kind == "started":
            self.buffer.drop_before(boundary.audio_ms)
            self._drop_turn()
            self.next_item_id = new_id("item")
            start = round(self.buffer.start_ms)
            await self.send(SpeechStarted(audio_start_ms=start, item_id=self.next_item_id))
            if self.response is not None and detection.interrupt_response:
                self.response[1].cancel()  # the user speaks over the answer
            return
        item_id = self.next_item_id or new_id("item")
        self.next_item_id = item_id
        await self.send(SpeechStopped(audio_end_ms=boundary.audio_ms, item_id=item_id))
        try:
            await self._commit(boundary.audio_ms)
        except APIError as exc:
            await self.error(exc)
            return
        if self.settings.type == "realtime" and detection.create_response:
            await self.create_response(ResponseCreate(type="response.create"))

    async def commit(self, event: ClientEvent) -> None:
        await self._commit()

    async def _commit(self, until_ms: float | None = None) -> None:
        """The buffer's audio (before `until_ms`, for a turn the detector ended) becomes
        the turn's item, transcribed when the session asks for it."""
        if self.buffer.seconds < MIN_COMMIT_SECONDS:
            raise _invalid(
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_SECONDS * 1000:.0f}ms of audio, but buffer only has "
                f"{self.buffer.seconds * 1000:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        if self.settings.type == "realtime":
            self._check_audio_room()
        start = self.buffer.start_ms
        audio = self.buffer.take(until_ms)
        seconds = (self.buffer.start_ms - start) / 1000
        if self.settings.detector is not None and until_ms is None:
            self.settings.detector.reset()
        self.counts["turns"] += 1
        self.counts["audio_seconds"] += seconds
        metrics.REALTIME_AUDIO_SECONDS.inc(seconds)
        item = ConversationItem(self.next_item_id or new_id("item"), "user", [("audio", audio)])
        self.next_item_id = None
        # The turn's prefill, if under way, goes on: the answer uses its blocks.
        self.prefill, self.prefilled = None, 0
        previous = self.last_item_id
        await self.send(
            BufferEvent(
                type="input_audio_buffer.committed", item_id=item.id, previous_item_id=previous
            )
        )
        await self._add_item(item, previous)
        if self.settings.transcription is not None:
            if self.turn is None or self.turn[1].done():
                self.turn = self._turn_transcript()
            turn, self.last_turn = self.turn
            turn.item_id = item.id
            turn.on_done = partial(setattr, item, "transcript")  # the item shows it after
            turn.finish(audio)
        self.turn = None

    def _audios(self) -> int:
        return sum(kind == "audio" for i in self.items for kind, _ in i.parts)

    @property
    def _max_audios(self) -> int:
        return self.runtime.config.max_audios_per_request

    def _check_audio_room(self, adding: int = 1) -> None:
        audios, limit = self._audios(), self._max_audios
        if audios + adding > limit:
            raise _invalid(
                f"This conversation holds {audios} audios; {adding} more would pass the "
                f"{limit} one response can take (--max-audios-per-request); start a new "
                "session.",
                code="too_many_audios",
            )

    async def clear(self, event: ClientEvent) -> None:
        self.buffer.clear()
        self._drop_turn()
        self.next_item_id = None
        if self.settings.detector is not None:
            self.settings.detector.reset()
        await self.send(BufferEvent(type="input_audio_buffer.cleared"))

    async def create_item(self, event: ItemCreate) -> None:
        if self.settings.type != "realtime":
            raise _invalid(
                "conversation.item.create needs a conversation session (session.type "
                "'realtime'); transcription sessions take audio only.",
                param="type",
            )
        parts: list[tuple[str, str | bytes]] = []
        for i, part in enumerate(event.item.content):
            param = f"item.content[{i}]"
            if part.type == "input_audio":
                parts.append(("audio", self._item_audio(part, param)))
            elif part.text is None:
                raise _invalid("A text part needs its text.", param=param + ".text")
            else:
                parts.append(("text", part.text))
        if adding := sum(kind == "audio" for kind, _ in parts):
            self._check_audio_room(adding)
        if event.item.id is not None and any(i.id == event.item.id for i in self.items):
            raise _invalid(
                f"The conversation already has an item with id '{event.item.id}'.",
                param="item.id",
                code="item_id_taken",
            )
        item = ConversationItem(event.item.id or new_id("item"), event.item.role, parts)
        await self._add_item(item, self.last_item_id)

    def _item_audio(self, part: ContentPart, param: str) -> bytes:
        if part.audio is None:
            raise _invalid("An input_audio part needs its audio.", param=param + ".audio")
        fmt = self.buffer.format
        data = b64decode(part.audio, param + ".audio")
        if fmt.type == "audio/pcm" and len(data) % 2:
            raise _invalid(
                "16-bit PCM audio must be a whole number of samples.", param=param + ".audio"
            )
        return wav(fmt.pcm16(data), fmt.rate)

    async def _add_item(self, item: ConversationItem, previous: str | None) -> None:
        if self.settings.type == "realtime":
            self.items.append(item)
        self.last_item_id = item.id
        for kind in ("conversation.item.added", "conversation.item.done"):
            await self.send(ItemEvent(type=kind, item=item.shown(), previous_item_id=previous))

    def _item(self, item_id: str) -> ConversationItem:
        for item in self.items:
            if item.id == item_id:
                return item
        raise _invalid(
            f"The conversation has no item with id '{item_id}'.",
            param="item_id",
            code="item_not_found",
        )

    async def delete_item(self, event: ItemReference) -> None:
        """The item leaves the conversation: later responses no longer hear it."""
        self.items.remove(self._item(event.item_id))
        if self.settings.type == "realtime":
            self.last_item_id = self.items[-1].id if self.items else None
        await self.send(ItemDeleted(item_id=event.item_id))

    async def retrieve_item(self, event: ItemReference) -> None:
        """The item as the server holds it, its audio (as committed) included."""
        await self.send(ItemRetrieved(item=self._item(event.item_id).shown(audio=True)))

    async def truncate_item(self, event: ItemReference) -> None:
        self._item(event.item_id)
        raise _invalid(
            "conversation.item.truncate cuts an assistant's audio; af3-serve answers in text "
            "only, so there is no audio to truncate.",
            param="item_id",
            code="unsupported_modality",
        )

    async def create_response(self, event: ResponseCreate) -> None:
        if self.settings.type != "realtime":
            raise _invalid(
                "response.create needs a conversation session (session.type 'realtime').",
                param="type",
            )
        config = event.response
        if config and config.output_modalities and "audio" in config.output_modalities:
            raise _audio_output_refused("response.output_modalities")
        if self.response is not None:
            raise _invalid(
                f"Conversation already has an active response in progress: "
                f"{self.response[0]}. Wait until the response is finished before creating "
                "a new one.",
                code="conversation_already_has_active_response",
            )
        response_id = new_id("resp")
        task = self._spawn(self._respond(response_id, config))
        self.response = (response_id, task)

    async def cancel_response(self, event: ResponseCancel) -> None:
        if self.response is None or event.response_id not in (None, self.response[0]):
            raise _invalid(
                "Cancellation failed: no active response found.",
                code="response_cancel_not_active",
            )
        self.response[1].cancel()

    # Engine work --------------------------------------------------------------------

    def _spawn(self, work: Any) -> asyncio.Task:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        """A task of the session ended; one that failed unexpectedly (its own errors are
        events) is logged with its session, and the session goes on."""
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("realtime session %s: a task failed", self.id, exc_info=exc)

    async def _cut(self, item: ConversationItem) -> None:
        """The item's audio parts as clips (prefill.py), decoded as an upload is, once."""
        inputs = self.runtime.inputs
        for j, (kind, value) in enumerate(item.parts):
            if kind == "audio" and j not in item.clips:
                param = f"item[{item.id}].content[{j}]"
                item.clips[j] = await inputs.off_loop(
                    decoded_clips, value, inputs.limits, inputs.spec, param
                )

    async def _messages(
        self, instructions: str | None, items: list[ConversationItem]
    ) -> tuple[list[dict], list[str], int]:
        """The conversation's `items` as chat messages (a run of user items is one user
        turn, in order), each audio's place named for errors (one per clip), and how many
        audio parts they hold."""
        for item in items:
            await self._cut(item)
        messages: list[dict[str, Any]] = []
        params: list[str] = []
        system = [instructions] if instructions else []
        system += [str(v) for i in items if i.role == "system" for _, v in i.parts]
        if system:
            messages.append({"role": "system", "content": "\n\n".join(system)})
        for item in items:
            if item.role == "system":
                continue
            if item.role == "assistant":
                text = "".join(str(v) for _, v in item.parts)
                messages.append({"role": "assistant", "content": text})
                continue
            if not messages or messages[-1]["role"] != "user":
                messages.append({"role": "user", "content": []})
            for j, (kind, value) in enumerate(item.parts):
                if kind == "text":
                    messages[-1]["content"].append({"type": "text", "text": value})
                    continue
                for clip in item.clips[j]:  # one audio, in its place
                    part = {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}}
                    messages[-1]["content"].append(part)
                    params.append(f"item[{item.id}].content[{j}]")
        return messages, params, sum(len(item.clips) for item in items)

    def _prepare(self, body: ChatCompletionRequest, params: list[str], audios: int) -> Any:
        """`prepare_chat` on the session's socket: `audios` audio parts (their clips in
        `params`), on the data-parallel engine of this conversation, where its prefix is."""
        chat, ws = self.chat, self.ws
        return prepare_chat(body, ws, self.runtime, chat, ENDPOINT, params, audios, self.id)

    def _chat_body(self, messages: list[dict], max_tokens: int | str) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate(
            {
                "model": self.settings.model,
                "messages": messages,
                "stream": True,
                "stream_options": {"include_usage": True},
                **({"max_tokens": max_tokens} if isinstance(max_tokens, int) else {}),
            }
        )

    async def _prefill(self, audio: bytes, windows: int, turn: int) -> None:
        """The conversation so far and the spoken turn's first `windows` windows (`audio`:
        the turn so far, a WAV file), for one token: their encoder work and prefill land in
        the prefix cache. Best effort: a refusal (the server busy) leaves it to the answer,
        and a turn committed meanwhile is the answer's to send."""
        inputs = self.runtime.inputs
        items = list(self.items)  # what precedes the turn, as its answer will have it
        served = None
        try:
            spoken = ConversationItem("", "user", [("audio", b"")])
            spoken.clips[0] = await inputs.off_loop(
                decoded_clips, audio, inputs.limits, inputs.spec, "audio", windows
            )
            messages, params, audios = await self._messages(
                self.settings.instructions, [*items, spoken]
            )
            if self.counts["turns"] != turn:
                return
            answer = await self._prepare(self._chat_body(messages, 1), params, audios)
            served = answer.served
            async with contextlib.aclosing(answer.chunk_models()) as chunks:
                async for _ in chunks:
                    pass
        except (APIError, EngineDeadError) as exc:
            logger.info("realtime session %s: a turn's prefill was not run: %s", self.id, exc)
        except Exception:  # best effort: never the session's end
            logger.exception("realtime session %s: a turn's prefill failed", self.id)
        finally:
            if served is not None:
                served.release()

    async def _respond(self, response_id: str, config: Any) -> None:
        s = self.settings
        instructions = (config.instructions if config else None) or s.instructions
        max_output = (config.max_output_tokens if config else None) or s.max_output_tokens
        item = ConversationItem(new_id("item"), "assistant", [("text", "")])
        response = Response(id=response_id, status="in_progress", max_output_tokens=max_output)
        await self.send(ResponseEvent(type="response.created", response=response))
        served = None
        outcome = "failed"
        text = ""
        try:
            messages, params, audios = await self._messages(instructions, list(self.items))
            if not any(m["role"] != "system" for m in messages):
                raise _invalid("The conversation is empty: commit audio or create an item first.")
            answer = await self._prepare(self._chat_body(messages, max_output), params, audios)
            served = answer.served
            shown = Item(id=item.id, role="assistant", status="in_progress", content=[])
            await self.send(
                OutputItemEvent(
                    type="response.output_item.added", response_id=response_id, item=shown
                )
            )
            ids = {"response_id": response_id, "item_id": item.id}
            await self.send(
                ContentPartEvent(type="response.content_part.added", part=Part(text=""), **ids)
            )
            usage = None
            finish = None
            async with contextlib.aclosing(answer.chunk_models()) as chunks:
                async for chunk in chunks:
                    usage = chunk.usage or usage
                    for choice in chunk.choices:
                        finish = choice.finish_reason or finish
                        if delta := choice.delta.content:
                            text += delta
                            await self.send(TextDelta(delta=delta, **ids))
            item.parts = [("text", text)]
            await self.send(TextDone(text=text, **ids))
            await self.send(
                ContentPartEvent(type="response.content_part.done", part=Part(text=text), **ids)
            )
            await self.send(
                OutputItemEvent(
                    type="response.output_item.done", response_id=response_id, item=item.shown()
                )
            )
            self.items.append(item)
            self.last_item_id = item.id
            response.status = "completed"
            if finish == "length":
                response.status = "incomplete"
                response.status_details = {"type": "incomplete", "reason": "max_output_tokens"}
            response.output = [item.shown()]
            if usage is not None:
                audio = usage.prompt_tokens_details.audio_tokens or 0
                response.usage = ResponseUsage(
                    input_tokens=usage.prompt_tokens,
                    output_tokens=usage.completion_tokens,
                    total_tokens=usage.total_tokens,
                    input_token_details={
                        "audio_tokens": audio,
                        "text_tokens": usage.prompt_tokens - audio,
                        "cached_tokens": usage.prompt_tokens_details.cached_tokens or 0,
                    },
                    output_token_details={
                        "text_tokens": usage.completion_tokens,
                        "audio_tokens": 0,
                    },
                )
            outcome = "completed"
        except asyncio.CancelledError:
            outcome = "cancelled"
            if self.closed:
                raise
            # response.cancel: the engine request is aborted; what was said so far stays.
            response.status = "cancelled"
            response.status_details = {"type": "cancelled", "reason": "client_cancelled"}
        except (APIError, EngineDeadError) as exc:
            error = exc if isinstance(exc, APIError) else engine_dead_error()
            await self.error(error)
            detail = ErrorEvent.of(error).error
            response.status = "failed"
            response.status_details = {
                "type": "failed",
                "error": {"type": detail.type, "code": detail.code},
            }
        finally:
            if served is not None:
                served.release()
            self.response = None
            self.counts["responses"] += 1
            metrics.REALTIME_TURNS.labels("response", outcome).inc()
        await self.send(ResponseEvent(type="response.done", response=response))

    async def close(self) -> None:
        """The socket is gone: its engine work is aborted now."""
        self.closed = True
        if self.tasks:
            metrics.CLIENT_DISCONNECTS.labels(ENDPOINT).inc()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _audio_output_refused(param: str) -> APIError:
    return _invalid(
        "Audio output is not available: AF3's speech output is not released; use "
        'output_modalities ["text"].',
        param=param,
        code="unsupported_modality",
    )
