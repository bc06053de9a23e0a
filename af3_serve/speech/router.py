"""POST /v1/audio/transcriptions and /v1/audio/translations, OpenAI's speech-to-text API,
served along `serving.py`'s path."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from af3_model_executor.constants import SAMPLE_RATE
from af3_serve import metrics
from af3_serve.admission import Ticket
from af3_serve.chat.protocol import completion_id
from af3_serve.edge.auth import require_api_key
from af3_serve.edge.errors import APIError
from af3_serve.runtime import Runtime, get_runtime
from af3_serve.serving import ServedRequest
from af3_serve.speech.serving import (
    LANGUAGES,
    MAX_TOKENS_PER_WINDOW,
    SpeechAnswer,
    Task,
    instruction,
    windows,
)
from af3_serve.speech.transcripts import Segment, to_srt, to_vtt

router = APIRouter(dependencies=[Depends(require_api_key)])

Format = Literal["json", "text", "srt", "vtt", "verbose_json"]


async def _serve(
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
    if runtime.models.is_think(model):
        raise APIError(
            400,
            "Thinking mode is for /v1/chat/completions; transcription uses the base model.",
            param="model",
        )
    if not 0.0 <= temperature <= 1.0:
        raise APIError(400, "temperature must be between 0 and 1.", param="temperature")
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "audio"},
                {"type": "text", "text": instruction(task, language, prompt)},
            ],
        }
    ]
    endpoint = "transcriptions" if task == "transcribe" else "translations"
    served = ServedRequest(runtime, request, endpoint)

    async def prepare(ticket: Ticket) -> tuple[float, list[tuple[int, int]], list[Any]]:
        audio = await runtime.inputs.decode(await file.read(), "file", ticket)
        bounds = windows(audio)
        try:
            inputs = [await runtime.inputs.render(conversation, [audio[a:b]]) for a, b in bounds]
        except APIError as exc:
            exc.param = "file"
            raise
        seconds = audio.size / SAMPLE_RATE
        metrics.REQUEST_AUDIO_SECONDS.observe(seconds)
        return seconds, bounds, inputs

    seconds, bounds, inputs = await served.prepare(prepare)
    params = SamplingParams(
        temperature=temperature,
        max_tokens=MAX_TOKENS_PER_WINDOW,
        logprobs=0,  # the sampled token's own logprob, for avg_logprob
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
    )
    answer = SpeechAnswer(served, bounds, inputs, params, completion_id(), runtime.audio_token_id)
    if stream:
        return served.stream(answer.events(), done=False)
    segments = await served.answer(answer.segments())
    return _response(task, language, response_format, seconds, segments, answer)


def _response(
    task: Task,
    language: str | None,
    response_format: Format,
    seconds: float,
    segments: list[Segment],
    answer: SpeechAnswer,
) -> Response:
    text = " ".join(s.text for s in segments if s.text)
    if response_format == "text":
        return PlainTextResponse(text + "\n")
    if response_format == "srt":
        return PlainTextResponse(to_srt(segments), media_type="application/x-subrip")
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(segments), media_type="text/vtt")
    usage = answer.usage(sum(len(s.tokens) for s in segments))
    if response_format == "verbose_json":
        # AF3 does not detect the language: report the one asked for, or say so.
        if task == "translate":
            reported = "english"
        else:
            reported = LANGUAGES.get(language or "", "unknown").lower()
        return JSONResponse(
            {
                "task": task,
                "language": reported,
                "duration": round(seconds, 3),
                "text": text,
                "segments": [s.verbose() for s in segments],
                "usage": usage,
            }
        )
    return JSONResponse({"text": text, "usage": usage})


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
        return await _serve(
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
