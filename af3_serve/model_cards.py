"""The /v1/models answer: one card for each model a server answers to."""

from typing import Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "af3-serve"
    max_model_len: int
    max_audio_seconds: float  # the longest audio one request's audio may be
    root: str | None = None  # for the thinking model: the base model it adapts
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
