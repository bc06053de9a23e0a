"""OpenAI messages -> the checkpoint's chat template, and the request's audios in order."""

import json
from dataclasses import dataclass
from typing import Any

from af3_model_executor.think_adapter import THINK_SUFFIX
from af3_serve.edge.errors import APIError
from af3_serve.inputs import tool_prompts
from af3_serve.protocol import (
    AssistantMessage,
    AudioPart,
    Message,
    TextPart,
    ToolMessage,
    UserMessage,
)


@dataclass(frozen=True)
class AudioRef:
    part: AudioPart
    param: str  # where its data sits in the request, for error messages


def _text(content: str | list[TextPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text for part in content)


def _assistant_text(message: AssistantMessage, i: int) -> str:
    calls = []
    for j, call in enumerate(message.tool_calls or ()):
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise APIError(
                400,
                "A tool call's arguments must be a JSON object, encoded as a string.",
                param=f"messages[{i}].tool_calls[{j}].function.arguments",
                code="invalid_value",
            )
        calls.append(tool_prompts.tool_call_text(call.function.name, arguments))
    return tool_prompts.assistant_text(_text(message.content), calls)


def to_conversation(
    messages: list[Message],
    tools: list[dict[str, Any]] | None = None,
    default_system: str = "",
) -> tuple[list[dict[str, Any]], list[AudioRef]]:
    """The HF chat-template form of the messages ({"type": "audio"} marks each audio),
    and the audio parts in prompt order. Tools, tool calls and tool results are written in
    Qwen2.5's format (`tool_prompts.py`); `default_system` is the template's own system
    prompt, which the tools follow when the request has none."""
    conversation: list[dict[str, Any]] = []
    audios: list[AudioRef] = []
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        if isinstance(message, ToolMessage):
            previous = conversation[-1] if conversation else None
            if previous is not None and previous.get("tool_results") is not None:
                previous["tool_results"].append(_text(message.content))
            else:
                conversation.append({"role": "user", "tool_results": [_text(message.content)]})
        elif isinstance(message, AssistantMessage) and message.tool_calls:
            conversation.append({"role": role, "content": _assistant_text(message, i)})
        elif isinstance(message, UserMessage) and not isinstance(message.content, str):
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
    for turn in conversation:
        if (results := turn.pop("tool_results", None)) is not None:
            turn["content"] = tool_prompts.tool_results_text(results)
    if tools:
        if conversation and conversation[0]["role"] == "system":
            system = conversation[0]["content"]
        else:
            system = default_system
            conversation.insert(0, {"role": "system", "content": ""})
        conversation[0]["content"] = tool_prompts.system_with_tools(system, tools)
    return conversation, audios


def last_message_text(conversation: list[dict[str, Any]]) -> str:
    """The text of the last turn (what `echo` puts before the answer)."""
    content = conversation[-1]["content"] if conversation else ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part["type"] == "text")


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
