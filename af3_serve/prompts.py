"""OpenAI messages -> the checkpoint's chat template, and the request's audios in order."""

from dataclasses import dataclass
from typing import Any

from af3_serve.protocol import AudioPart, Message, TextPart, UserMessage


@dataclass(frozen=True)
class AudioRef:
    part: AudioPart
    param: str  # where its data sits in the request, for error messages


def _text(content: str | list[TextPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text for part in content)


def to_conversation(messages: list[Message]) -> tuple[list[dict[str, Any]], list[AudioRef]]:
    """The HF chat-template form of the messages ({"type": "audio"} marks each audio),
    and the audio parts in prompt order."""
    conversation: list[dict[str, Any]] = []
    audios: list[AudioRef] = []
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        if isinstance(message, UserMessage) and not isinstance(message.content, str):
            content: list[dict[str, Any]] = []
            for j, part in enumerate(message.content):
                if isinstance(part, TextPart):
                    content.append({"type": "text", "text": part.text})
                else:
                    content.append({"type": "audio"})
                    field = "input_audio.data" if part.type == "input_audio" else "audio_url.url"
                    audios.append(AudioRef(part, f"messages[{i}].content[{j}].{field}"))
            conversation.append({"role": role, "content": content})
        else:
            conversation.append({"role": role, "content": _text(message.content)})
    return conversation, audios
