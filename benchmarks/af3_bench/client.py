"""One request (a chat completion, or a transcription with --transcribe): send it, read the
SSE stream, and time it."""

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from af3_bench.workload import Request


@dataclass
class RequestRecord:
    index: int
    audio_seconds: float
    turn: int = 1  # of its conversation (--turns)
    start_s: float = 0.0  # when it was sent, from the start of its pass
    ok: bool = False
    status: int | None = None  # HTTP status; None when no response came
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    audio_tokens: int | None = None
    cached_tokens: int | None = None
    ttft_s: float | None = None  # streaming only
    itl_s: list[float] = field(default_factory=list)  # gaps between content chunks
    tpot_s: float | None = None
    e2el_s: float | None = None
    answer: str = ""  # the text returned; the next turn sends it back as history


def tpot(e2el_s: float, ttft_s: float | None, completion_tokens: int | None) -> float | None:
    """Time per output token after the first: (e2e - ttft) / (completion_tokens - 1)."""
    if ttft_s is None or completion_tokens is None or completion_tokens < 2:
        return None
    return (e2el_s - ttft_s) / (completion_tokens - 1)


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:300].decode(errors="replace")


def _answer(payload: dict[str, Any]) -> str:
    choices = payload.get("choices") or [{}]
    return (choices[0].get("message") or {}).get("content") or ""


def _take_usage(record: RequestRecord, usage: dict[str, Any]) -> None:
    record.prompt_tokens = usage.get("prompt_tokens")
    record.completion_tokens = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details") or {}
    record.audio_tokens = details.get("audio_tokens")
    record.cached_tokens = details.get("cached_tokens")


async def _read_stream(response: httpx.Response, record: RequestRecord, start: float) -> None:
    last = start
    content_chunks = 0
    text: list[str] = []
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        now = time.perf_counter()
        chunk = json.loads(payload)
        if "error" in chunk:  # a failure after the 200 status went out
            record.error = _error_message(payload.encode())
            return
        if chunk.get("usage"):
            _take_usage(record, chunk["usage"])
        for choice in chunk.get("choices") or []:
            # The opening role-only chunk is no token; a finish without text counts only
            # when nothing came before it (a first token that decodes to no text).
            content = choice.get("delta", {}).get("content")
            if content:
                text.append(content)
            if content or (record.ttft_s is None and choice.get("finish_reason")):
                if record.ttft_s is None:
                    record.ttft_s = now - start
                else:
                    record.itl_s.append(now - last)
                last = now
                content_chunks += 1
    else:
        record.error = "the stream ended without data: [DONE]"
        return
    if record.completion_tokens is None:  # no usage chunk: one token per chunk, roughly
        record.completion_tokens = content_chunks
    record.answer = "".join(text)
    record.ok = True


def _take_transcription_usage(record: RequestRecord, usage: dict[str, Any]) -> None:
    record.prompt_tokens = usage.get("input_tokens")
    record.completion_tokens = usage.get("output_tokens")
    record.audio_tokens = (usage.get("input_token_details") or {}).get("audio_tokens")


async def _read_transcription_stream(
    response: httpx.Response, record: RequestRecord, start: float
) -> None:
    """`transcript.text.delta` events (the first one is the TTFT), then one `done` with the
    text and usage; no [DONE]."""
    last = start
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        now = time.perf_counter()
        event = json.loads(line[5:].strip())
        if "error" in event:
            record.error = _error_message(line[5:].strip().encode())
            return
        if event.get("type") == "transcript.text.delta":
            if record.ttft_s is None:
                record.ttft_s = now - start
            else:
                record.itl_s.append(now - last)
            last = now
        elif event.get("type") == "transcript.text.done":
            _take_transcription_usage(record, event.get("usage") or {})
            record.answer = event.get("text", "")
            record.ok = True
            return
    record.error = "the stream ended without transcript.text.done"


async def send(
    client: httpx.AsyncClient,
    base_url: str,
    headers: dict[str, str],
    request: Request,
    stream: bool,
    pass_start: float,
) -> RequestRecord:
    """POST one request to `base_url` + its path and time it; failures are recorded, never
    raised."""
    record = RequestRecord(request.index, request.audio_seconds, request.turn)
    url = base_url.rstrip("/") + request.path
    headers = headers | {"Content-Type": request.content_type}
    body = b"".join(request.body)  # before the clock: a long clip is megabytes to copy
    start = time.perf_counter()
    record.start_s = start - pass_start
    try:
        if stream:
            async with client.stream("POST", url, content=body, headers=headers) as response:
                record.status = response.status_code
                if response.status_code == 200 and request.transcription:
                    await _read_transcription_stream(response, record, start)
                elif response.status_code == 200:
                    await _read_stream(response, record, start)
                else:
                    record.error = _error_message(await response.aread())
        else:
            response = await client.post(url, content=body, headers=headers)
            record.status = response.status_code
            if response.status_code == 200:
                payload = response.json()
                if request.transcription:
                    _take_transcription_usage(record, payload.get("usage") or {})
                    record.answer = payload.get("text", "")
                else:
                    _take_usage(record, payload.get("usage") or {})
                    record.answer = _answer(payload)
                record.ok = True
            else:
                record.error = _error_message(response.content)
    except (httpx.HTTPError, ValueError) as exc:  # ValueError: a malformed JSON body
        record.error = f"{type(exc).__name__}: {exc}"
    if record.ok:
        record.e2el_s = time.perf_counter() - start
        record.tpot_s = tpot(record.e2el_s, record.ttft_s, record.completion_tokens)
    return record
