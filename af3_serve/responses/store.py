"""Stored responses, for `previous_response_id` and GET/DELETE /v1/responses/{id}: held in
this process's memory (gone with a restart, not shared between replicas), the least recently
used dropped first once their conversations pass the byte budget."""

from collections import OrderedDict
from dataclasses import dataclass

from af3_serve.protocol import InputAudioPart, Message, TextPart
from af3_serve.responses.protocol import Response


@dataclass
class Stored:
    response: Response
    history: list[Message]  # the conversation up to its answer, without the instructions
    size: int


def conversation_bytes(history: list[Message]) -> int:
    """About what a conversation holds in memory: its texts and its audios' base64."""
    size = 0
    for message in history:
        content = message.content
        if isinstance(content, str):
            size += len(content)
            continue
        for part in content or []:
            if isinstance(part, TextPart):
                size += len(part.text)
            elif isinstance(part, InputAudioPart):
                size += len(part.input_audio.data)
            else:
                size += len(part.audio_url.url)
    return size


class ResponseStore:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def put(self, response: Response, history: list[Message]) -> bool:
        """Whether it was stored: a conversation larger than the whole budget is not."""
        size = conversation_bytes(history)
        if size > self.max_bytes:
            return False
        self._items[response.id] = Stored(response, history, size)
        self.used += size
        while self.used > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.used -= dropped.size
        return True

    def get(self, response_id: str) -> Stored | None:
        stored = self._items.get(response_id)
        if stored is not None:
            self._items.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> bool:
        stored = self._items.pop(response_id, None)
        if stored is not None:
            self.used -= stored.size
        return stored is not None
