"""OpenAI messages -> the checkpoint's chat template, and the request's audios in order."""

from dataclasses import dataclass
from typing import Any

from af3_model_executor.think_adapter import THINK_SUFFIX
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


def with_think_suffix(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """AF3's thinking sentence after the text of the last user turn (once)."""
    turns = [dict(m) for m in conversation]
    last = next((m for m in reversed(turns) if m["role"] == "user"), None)
    if last is None:
        return turns
    if isinstance(last["content"], str):
        text = last["content"]
        if not text.rstrip().endswith(THINK_SUFFIX):
            last["content"] = f"{text} {THINK_SUFFIX}".lstrip()
        return turns
    parts = list(last["content"])
    texts = [i for i, p in enumerate(parts) if p["type"] == "text"]
    if not texts:
        parts.append({"type": "text", "text": THINK_SUFFIX})
    elif not parts[texts[-1]]["text"].rstrip().endswith(THINK_SUFFIX):
        i = texts[-1]
        parts[i] = {"type": "text", "text": f"{parts[i]['text']} {THINK_SUFFIX}".lstrip()}
    last["content"] = parts
    return turns
