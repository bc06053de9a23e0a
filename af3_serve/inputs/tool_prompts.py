"""Tools in the prompt, in Qwen2.5's format (AF3's decoder is Qwen2.5-7B; AF3's chat template
has no tool format of its own): the tools' signatures after the system prompt, each call of an
assistant turn as `<tool_call>{"name", "arguments"}</tool_call>`, and a run of tool results
as one user turn of `<tool_response>`s. Written as the text of ordinary turns, so the
checkpoint's own template renders them, audio included; with AF3's ChatML template the
prompt is character for character what Qwen2.5's template makes of the same conversation
(tests/http/test_chat_tools.py: against transformers' `apply_chat_template(tools=...)`)."""

import json
from typing import Any

TOOLS_HEADER = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # as transformers' template `tojson`


def system_with_tools(system: str, tools: list[dict[str, Any]]) -> str:
    return system + TOOLS_HEADER + "".join("\n" + _json(t) for t in tools) + TOOLS_FOOTER


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {_json(arguments)}}}\n</tool_call>'


def assistant_text(content: str, calls: list[str]) -> str:
    """An assistant turn's text with its calls (each from `tool_call_text`)."""
    return "\n".join(([content] if content else []) + calls)


def tool_results_text(results: list[str]) -> str:
    """Consecutive tool messages, as the text of one user turn."""
    return "\n".join(f"<tool_response>\n{r}\n</tool_response>" for r in results)
