"""POST /v1/audio/transcriptions and /v1/audio/translations, OpenAI's speech-to-text API,
served along `serving.py`'s path."""

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import PlainTextResponse, Response
from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from af3_model_executor.constants import SAMPLE_RATE
from af3_serve import metrics
from af3_serve.admission import Ticket
from af3_serve.edge.auth import require_api_key
from af3_serve.edge.errors import APIError
from af3_serve.runtime import Runtime, get_runtime
from af3_serve.serving import ServedRequest
from af3_serve.speech.protocol import (
    LANGUAGES,
    Task,
    TranscriptionRequest,
    TranscriptionResponse,
    TranscriptionResponseVerbose,
    TranscriptionSegment,
)
from af3_serve.speech.segmentation import Window, plan_windows
from af3_serve.speech.serving import MAX_TOKENS_PER_WINDOW, SpeechAnswer, instruction
from af3_serve.speech.subtitles import to_srt, to_vtt

router = APIRouter(dependencies=[Depends(require_api_key)])

Answer = Response | TranscriptionResponse | TranscriptionResponseVerbose


async def _serve(
    task: Task, request: Request, runtime: Runtime, form: TranscriptionRequest
) -> Answer:
    if runtime.models.is_think(form.model):
        raise APIError(
            400,
            "Thinking mode is for /v1/chat/completions; transcription uses the base model.",
            param="model",
        )
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "audio"},
                {"type": "text", "text": instruction(task, form.language, form.prompt)},
            ],
        }
    ]
    endpoint = "transcriptions" if task == "transcribe" else "translations"
    served = ServedRequest(runtime, request, endpoint)

    async def prepare(ticket: Ticket) -> tuple[np.ndarray, list[Window]]:
        # The upload as it lies (spooled to disk by the form parser), never a bytes copy.
        pcm = await runtime.inputs.decode_transcription(form.file.file, "file", ticket)
        metrics.REQUEST_AUDIO_SECONDS.observe(pcm.size / SAMPLE_RATE)
        regions = await runtime.inputs.voice.regions(pcm)
        return pcm, await runtime.inputs.off_loop(plan_windows, pcm, regions)

    async def render(audio: np.ndarray) -> Any:
        try:
            return await runtime.inputs.render(conversation, [audio])
        except APIError as exc:
            exc.param = "file"
            raise

    pcm, windows = await served.prepare(prepare)
    params = SamplingParams(
        temperature=form.temperature,
        max_tokens=MAX_TOKENS_PER_WINDOW,
        logprobs=0,  # the sampled token's own logprob, for avg_logprob
        output_kind=RequestOutputKind.DELTA if form.stream else RequestOutputKind.FINAL_ONLY,
    )
    answer = SpeechAnswer(served, render, pcm, windows, params)
    if form.stream:
        return served.stream(answer.events(), done=False)
    segments = await served.answer(answer.segments())
    return _response(task, form, pcm.size / SAMPLE_RATE, segments, answer)


def _response(
    task: Task,
    form: TranscriptionRequest,
    seconds: float,
    segments: list[TranscriptionSegment],
    answer: SpeechAnswer,
) -> Answer:
    text = " ".join(s.text for s in segments if s.text)
    if form.response_format == "text":
        return PlainTextResponse(text + "\n")
    if form.response_format == "srt":
        return PlainTextResponse(to_srt(segments), media_type="application/x-subrip")
    if form.response_format == "vtt":
        return PlainTextResponse(to_vtt(segments), media_type="text/vtt")
    usage = answer.usage(sum(len(s.tokens) for s in segments))
    if form.response_format == "verbose_json":
        # AF3 does not detect the language: report the one asked for, or say so.
        if task == "translate":
            language = "english"
        else:
            language = LANGUAGES.get(form.language or "", "unknown").lower()
        return TranscriptionResponseVerbose(
            task=task,
            language=language,
            duration=round(seconds, 3),
            text=text,
            segments=segments,
            usage=usage,
        )
    return TranscriptionResponse(text=text, usage=usage)


def _route(task: Task):  # noqa: ANN202 - a FastAPI endpoint
    async def endpoint(
        request: Request,
        runtime: Annotated[Runtime, Depends(get_runtime)],
        # FastAPI builds the model from the form's fields; multipart, as it carries a file.
        form: Annotated[TranscriptionRequest, Form(media_type="multipart/form-data")],
    ) -> Answer:
        return await _serve(task, request, runtime, form)

    return endpoint


TRANSCRIPTION_PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations")
router.post(TRANSCRIPTION_PATHS[0], response_model=None)(_route("transcribe"))
router.post(TRANSCRIPTION_PATHS[1], response_model=None)(_route("translate"))
