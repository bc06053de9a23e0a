"""POST /v1/audio/transcriptions and /v1/audio/translations, OpenAI's speech-to-text API.

The audio is cut into AF3's 30-s windows and each window is transcribed as its own
engine request, all of them batched concurrently by the engine, then stitched in order.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from af3_serve import metrics
from af3_serve.admission import Ticket
from af3_serve.audio import TARGET_RATE
from af3_serve.cancellation import engine_errors, until_disconnect
from af3_serve.dependencies import get_runtime, require_api_key
from af3_serve.errors import APIError
from af3_serve.protocol import completion_id
from af3_serve.runtime import Runtime
from af3_serve.transcripts import Segment, TranscriptCleaner, clean, to_srt, to_vtt

router = APIRouter(dependencies=[Depends(require_api_key)])

Task = Literal["transcribe", "translate"]
Format = Literal["json", "text", "srt", "vtt", "verbose_json"]
WINDOW_SAMPLES = 30 * TARGET_RATE
# A last piece shorter than this rides with the previous window (AF3 takes any length).
MIN_TAIL_SAMPLES = TARGET_RATE
MAX_TOKENS_PER_WINDOW = 512
LANGUAGES = {
    "en": "English", "zh": "Chinese", "de": "German", "es": "Spanish", "ru": "Russian",
    "ko": "Korean", "fr": "French", "ja": "Japanese", "pt": "Portuguese", "tr": "Turkish",
    "pl": "Polish", "it": "Italian", "nl": "Dutch", "ar": "Arabic", "sv": "Swedish",
    "hi": "Hindi", "fi": "Finnish", "vi": "Vietnamese", "uk": "Ukrainian", "el": "Greek",
    "cs": "Czech", "ro": "Romanian", "da": "Danish", "hu": "Hungarian", "he": "Hebrew",
    "id": "Indonesian", "no": "Norwegian", "th": "Thai",
}  # fmt: skip


def instruction(task: Task, language: str | None, prompt: str | None) -> str:
    """AF3's own instruction, with the language and the caller's prompt folded in."""
    if task == "translate":
        text = "Translate the input speech into English."
    else:
        text = "Transcribe the input speech."
    if language:
        if language not in LANGUAGES:
            raise APIError(
                400,
                f"Unsupported language '{language}' (ISO-639-1 codes: "
                f"{', '.join(sorted(LANGUAGES))}).",
                param="language",
            )
        text += f" The speech is in {LANGUAGES[language]}."
    if prompt:
        text += f" Context: {prompt.strip()}"
    return text


def windows(audio: Any) -> list[tuple[int, int]]:
    bounds = [
        (s, min(s + WINDOW_SAMPLES, audio.size)) for s in range(0, audio.size, WINDOW_SAMPLES)
    ]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_TAIL_SAMPLES:
        bounds[-2:] = [(bounds[-2][0], bounds[-1][1])]
    return bounds


async def _handle(
    task: Task,
    request: Request,
    runtime: Runtime,
    file: UploadFile,
    model: str,
    prompt: str | None,
    language: str | None,
    temperature: float,
    response_format: Format,
    stream: bool,
) -> Response:
    endpoint = "transcriptions" if task == "transcribe" else "translations"
    if runtime.check_model(model):
        raise APIError(
            400,
            "Thinking mode is for /v1/chat/completions; transcription uses the base model.",
            param="model",
        )
    if not 0.0 <= temperature <= 1.0:
        raise APIError(400, "temperature must be between 0 and 1.", param="temperature")
    text_instruction = instruction(task, language, prompt)
    ticket = runtime.admit(request.state.client)
    try:
        conversation = [
            {
                "role": "user",
                "content": [{"type": "audio"}, {"type": "text", "text": text_instruction}],
            }
        ]

        async def prepare() -> tuple[Any, list[tuple[int, int]], list[Any]]:
            audio = await runtime.decode(await file.read(), "file", ticket)
            bounds = windows(audio)
            try:
                inputs = [await runtime.render(conversation, [audio[a:b]]) for a, b in bounds]
            except APIError as exc:
                exc.param = "file"
                raise
            return audio, bounds, inputs

        # A client that leaves while its file is decoded stops the work here.
        audio, bounds, inputs = await until_disconnect(request, prepare(), endpoint + "_prepare")
        metrics.REQUEST_AUDIO_SECONDS.observe(audio.size / TARGET_RATE)
        params = SamplingParams(
            temperature=temperature,
            max_tokens=MAX_TOKENS_PER_WINDOW,
            logprobs=0,  # the sampled token's own logprob, for avg_logprob
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        )
    except BaseException:
        runtime.admission.release(ticket)
        raise

    request_id = completion_id()
    generators = [
        runtime.generate(engine_input, params, f"{request_id}-{i}")
        for i, engine_input in enumerate(inputs)
    ]
    audio_tokens = sum(
        sum(1 for t in e["prompt_token_ids"] if t == runtime.audio_token_id) for e in inputs
    )
    prompt_tokens = sum(len(e["prompt_token_ids"]) for e in inputs)

    def usage(output_tokens: int) -> dict:
        return {
            "type": "tokens",
            "input_tokens": prompt_tokens,
            "output_tokens": output_tokens,
            "total_tokens": prompt_tokens + output_tokens,
            "input_token_details": {
                "audio_tokens": audio_tokens,
                "text_tokens": prompt_tokens - audio_tokens,
            },
        }

    if stream:
        return StreamingResponse(
            _stream(runtime, ticket, generators, usage, endpoint), media_type="text/event-stream"
        )

    async def collect() -> list[Segment]:
        finals = await asyncio.gather(*(_last(g) for g in generators))
        segments = []
        for i, ((a, b), out) in enumerate(zip(bounds, finals, strict=True)):
            o = out.outputs[0]
            logprobs = [lp[t].logprob for t, lp in zip(o.token_ids, o.logprobs or [], strict=False)]
            segments.append(
                Segment(
                    id=i,
                    start=round(a / TARGET_RATE, 3),
                    end=round(b / TARGET_RATE, 3),
                    text=clean(o.text),
                    tokens=list(o.token_ids),
                    temperature=temperature,
                    avg_logprob=sum(logprobs) / len(logprobs) if logprobs else 0.0,
                )
            )
        return segments

    try:
        segments = await until_disconnect(request, engine_errors(collect()), endpoint)
    finally:
        runtime.admission.release(ticket)
    text = " ".join(s.text for s in segments if s.text)
    if response_format == "text":
        return PlainTextResponse(text + "\n")
    if response_format == "srt":
        return PlainTextResponse(to_srt(segments), media_type="application/x-subrip")
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(segments), media_type="text/vtt")
    output_tokens = sum(len(s.tokens) for s in segments)
    if response_format == "verbose_json":
        return JSONResponse(
            {
                "task": task,
                # AF3 does not detect the language: report the one asked for, or say so.
                "language": "english"
                if task == "translate"
                else LANGUAGES.get(language or "", "unknown").lower(),
                "duration": round(audio.size / TARGET_RATE, 3),
                "text": text,
                "segments": [s.verbose() for s in segments],
                "usage": usage(output_tokens),
            }
        )
    return JSONResponse({"text": text, "usage": usage(output_tokens)})


async def _last(generator: AsyncIterator[Any]) -> Any:
    final = None
    async for out in generator:
        final = out
    return final


async def _stream(
    runtime: Runtime, ticket: Ticket, generators: list, usage: Any, endpoint: str
) -> AsyncIterator[str]:
    """Every window generates at once; deltas go out in window order, each window's
    wrapper phrasing removed on the fly."""
    queues: list[asyncio.Queue] = [asyncio.Queue() for _ in generators]

    async def pump(generator: AsyncIterator[Any], queue: asyncio.Queue) -> None:
        async for out in generator:
            await queue.put(out.outputs[0])
        await queue.put(None)

    tasks = [asyncio.create_task(pump(g, q)) for g, q in zip(generators, queues, strict=True)]
    pieces: list[str] = []
    output_tokens = 0
    try:
        for queue in queues:
            cleaner, window_text, sent = TranscriptCleaner(), "", ""
            while (o := await queue.get()) is not None:
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
        yield _event(
            {
                "type": "transcript.text.done",
                "text": " ".join(pieces),
                "usage": usage(output_tokens),
            }
        )
    except (asyncio.CancelledError, GeneratorExit):
        metrics.CLIENT_DISCONNECTS.labels(endpoint + "_stream").inc()
        raise
    finally:
        for task in tasks:
            task.cancel()  # cancelling a pump aborts its engine request
        runtime.admission.release(ticket)


def _delta(text: str, window_start: bool, after_previous: bool) -> str:
    if window_start and after_previous:
        text = " " + text
    return _event({"type": "transcript.text.delta", "delta": text})


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _route(task: Task):  # noqa: ANN202 - a FastAPI endpoint
    async def endpoint(
        request: Request,
        runtime: Annotated[Runtime, Depends(get_runtime)],
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        prompt: Annotated[str | None, Form()] = None,
        language: Annotated[str | None, Form()] = None,
        temperature: Annotated[float, Form()] = 0.0,
        response_format: Annotated[Format, Form()] = "json",
        stream: Annotated[bool, Form()] = False,
    ) -> Response:
        return await _handle(
            task,
            request,
            runtime,
            file,
            model,
            prompt,
            language,
            temperature,
            response_format,
            stream,
        )

    return endpoint


router.post("/v1/audio/transcriptions", response_model=None)(_route("transcribe"))
router.post("/v1/audio/translations", response_model=None)(_route("translate"))
