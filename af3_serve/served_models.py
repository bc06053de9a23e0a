"""The models a server answers to: the base model and, with a thinking adapter, the thinking
model; which one a request names, and their cards for /v1/models (`model_cards.py`)."""

import time

from af3_serve.config import ServerConfig
from af3_serve.edge.errors import APIError
from af3_serve.model_cards import ModelCard, ModelList


class ServedModels:
    def __init__(
        self, config: ServerConfig, has_think: bool, max_model_len: int, max_audio_seconds: float
    ) -> None:
        self.base = config.served_model_name
        self.aliases = {config.served_model_name, config.model}
        self.think = config.think_name if has_think else None
        self.max_model_len = max_model_len
        self.max_audio_seconds = max_audio_seconds
        self.created = int(time.time())

    def is_think(self, model: str, thinking: bool | None = None) -> bool:
        """Whether a request runs in thinking mode, asked for by the model name or by the
        `thinking` field; refuses models we do not serve."""
        if model == self.think:
            if thinking is False:
                raise APIError(
                    400,
                    f"The model '{model}' always thinks; use '{self.base}' for answers "
                    "without thinking.",
                    param="thinking",
                )
            return True
        if model not in self.aliases:
            raise APIError(
                404, f"The model '{model}' does not exist.", param="model", code="model_not_found"
            )
        if thinking and self.think is None:
            raise APIError(
                400,
                "Thinking mode is not available: the server runs without a thinking adapter.",
                param="thinking",
                code="thinking_unavailable",
            )
        return bool(thinking)

    def cards(self) -> ModelList:
        limits = {
            "created": self.created,
            "max_model_len": self.max_model_len,
            "max_audio_seconds": self.max_audio_seconds,
        }
        cards = [ModelCard(id=self.base, **limits)]
        if self.think is not None:
            cards.append(ModelCard(id=self.think, root=self.base, parent=self.base, **limits))
        return ModelList(data=cards)
