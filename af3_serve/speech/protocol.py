"""OpenAI's speech-to-text schema, as far as AF3 serves it (modelled on vLLM's
`entrypoints/speech_to_text/transcription/protocol.py`): the form both endpoints take, and
their answers (json, verbose_json, stream events). A translation is a transcription into
English: same form, same answers.

The form's own checks answer as the rest of the API does (400, OpenAI's error shape naming
the field); they run after pydantic's type checks, before the model name is looked up."""

import zlib
from typing import Literal

from fastapi import UploadFile
from pydantic import BaseModel, Field, model_validator

from af3_serve.edge.errors import APIError
from af3_serve.protocol import random_id

Task = Literal["transcribe", "translate"]
ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
# The ISO-639-1 codes `language` takes, and the names AF3's instruction gives them.
LANGUAGES = {
    "en": "English", "zh": "Chinese", "de": "German", "es": "Spanish", "ru": "Russian",
    "ko": "Korean", "fr": "French", "ja": "Japanese", "pt": "Portuguese", "tr": "Turkish",
    "pl": "Polish", "it": "Italian", "nl": "Dutch", "ar": "Arabic", "sv": "Swedish",
    "hi": "Hindi", "fi": "Finnish", "vi": "Vietnamese", "uk": "Ukrainian", "el": "Greek",
    "cs": "Czech", "ro": "Romanian", "da": "Danish", "hu": "Hungarian", "he": "Hebrew",
    "id": "Indonesian", "no": "Norwegian", "th": "Thai",
}  # fmt: skip


def transcription_id() -> str:
    return random_id("trsc")


class TranscriptionRequest(BaseModel):
    """The multipart form of /v1/audio/transcriptions and /v1/audio/translations. Fields we
    do not use are ignored, as OpenAI's clients send some of them."""

    file: UploadFile
    model: str
    prompt: str | None = None
    language: str | None = None
    temperature: float = 0.0
    response_format: ResponseFormat = "json"
    stream: bool = False
    # Segments are the windows cut at the pauses; AF3 gives no word timings.
    timestamp_granularities: list[Literal["segment", "word"]] = Field(
        default_factory=list, alias="timestamp_granularities[]"
    )

    @model_validator(mode="after")
    def _check(self) -> "TranscriptionRequest":
        if "word" in self.timestamp_granularities:
            raise APIError(
                400,
                "Word timestamps are not available: Audio Flamingo 3 gives no word timings. "
                "Use timestamp_granularities[]=segment (segments follow the speech, cut at "
                "its pauses).",
                param="timestamp_granularities[]",
            )
        if not 0.0 <= self.temperature <= 1.0:
            raise APIError(400, "temperature must be between 0 and 1.", param="temperature")
        if self.language and self.language not in LANGUAGES:
            raise APIError(
                400,
                f"Unsupported language '{self.language}' (ISO-639-1 codes: "
                f"{', '.join(sorted(LANGUAGES))}).",
                param="language",
            )
        return self


class InputTokenDetails(BaseModel):
    audio_tokens: int
    text_tokens: int


class TranscriptionUsage(BaseModel):
    type: Literal["tokens"] = "tokens"
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_token_details: InputTokenDetails


class TranscriptionSegment(BaseModel):
    """One window of the audio (at most 30 s of speech, cut at pauses), transcribed as its
    own engine request: AF3 gives no word or sentence timings, so its times are where the
    window's speech starts and ends."""

    id: int
    seek: int  # Whisper counts in 10-ms frames
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float

    @classmethod
    def of_window(
        cls,
        id: int,
        start: float,
        end: float,
        text: str,
        tokens: list[int],
        temperature: float,
        avg_logprob: float,
    ) -> "TranscriptionSegment":
        raw = text.encode()
        ratio = len(raw) / len(zlib.compress(raw)) if raw else 0.0
        return cls(
            id=id,
            seek=int(start * 100),
            start=start,
            end=end,
            text=text,
            tokens=tokens,
            temperature=temperature,
            avg_logprob=avg_logprob,
            compression_ratio=round(ratio, 3),
        )


class TranscriptionResponse(BaseModel):
    text: str
    usage: TranscriptionUsage


class TranscriptionResponseVerbose(BaseModel):
    task: Task
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment]
    usage: TranscriptionUsage


class TranscriptionTextDelta(BaseModel):
    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str


class TranscriptionTextDone(BaseModel):
    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
    usage: TranscriptionUsage
