"""Tools on chat, the HTTP side on the fake engine (whose answer plays the model's text):
the prompt in Qwen2.5's tool format, equal to transformers' `apply_chat_template(tools=...)`
with Qwen2.5's template; vLLM's hermes parser turning the answer into tool calls, whole and
as OpenAI's stream deltas, with OpenAI's finish reasons; and, without the tool flags, vLLM's
400 naming them."""

import json

import pytest
from transformers import AutoTokenizer

from af3_serve.config import SettingsError, parse_args
from tests.support.audio_files import audio_part, make_clip
from tests.support.http_helpers import (
    CHAT,
    MODEL,
    assert_error,
    chat_body,
    server_fixture,
    sse_data,
)

TOOL_FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")
tools_api = server_fixture(*TOOL_FLAGS)
plain_api = server_fixture()

LABEL = {
    "type": "object",
    "properties": {"label": {"type": "string"}},
    "required": ["label"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "tag", "description": "Tag it.", "parameters": LABEL},
    },
    {"type": "function", "function": {"name": "rate", "parameters": {"type": "object"}}},
]
CALL = '<tool_call>\n{"name": "tag", "arguments": {"label": "speech"}}\n</tool_call>'
NAMED = {"type": "function", "function": {"name": "tag"}}

# Qwen2.5-Instruct's chat template (its tokenizer_config.json), with one change: the default
# system prompt is AF3's ("You are a helpful assistant.", what AF3's own template adds) for
# Qwen's "You are Qwen, created by Alibaba Cloud. ...".
QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] =="
    " 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You "
    "are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call"
    " one or more functions to assist with the user query.\\n\\nYou are provided with "
    'function signatures within <tools></tools> XML tags:\\n<tools>" }}\n    {%- for tool in'
    ' tools %}\n        {{- "\\n" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    '
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name '
    'and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": '
    '<function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>"
    "system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- "
    "'<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n"
    '{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == "user") or '
    '(message.role == "system" and not loop.first) or (message.role == "assistant" and not '
    "message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + "
    "message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}"
    "\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for "
    "tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}"
    "\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n            {{- tool_call.name }}\n'
    '            {{- \'", "arguments": \' }}\n            {{- tool_call.arguments | tojson }}'
    "\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>"
    '\\n\' }}\n    {%- elif message.role == "tool" %}\n        {%- if (loop.index0 == 0) or '
    "(messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content"
    " }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or "
    "(messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

HISTORY = [
    {"role": "user", "content": "Tag the last recording."},
    {
        "role": "assistant",
        "content": "Let me see.",
        "tool_calls": [
            {"id": "a", "type": "function",
             "function": {"name": "tag", "arguments": '{"label": "é"}'}},
            {"id": "b", "type": "function", "function": {"name": "rate", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "a", "content": '{"ok": true}'},
    {"role": "tool", "tool_call_id": "b", "content": "3 stars"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "tag", "arguments": '{"label": "x"}'}}
    ]},
    {"role": "tool", "tool_call_id": "c", "content": "done"},
    {"role": "user", "content": "Thanks. And now?"},
]  # fmt: skip


def body(**extra) -> dict:
    return {"model": MODEL, "messages": HISTORY, "max_tokens": 300, **extra}


def as_transformers_gets_it(messages: list[dict]) -> list[dict]:
    """OpenAI messages as transformers' templates take them: arguments as objects."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {"type": "function", "function": {"name": c["function"]["name"],
                 "arguments": json.loads(c["function"]["arguments"])}}
                for c in m["tool_calls"]
            ]  # fmt: skip
        out.append(m)
    return out


@pytest.mark.parametrize("system", [None, "You tag audio."])
async def test_the_prompt_is_qwen25s_tool_format(tools_api, tiny_checkpoint, system) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    messages = ([{"role": "system", "content": system}] if system else []) + HISTORY
    response = await tools_api.client.post(CHAT, json=body(messages=messages, tools=TOOLS))
    assert response.status_code == 200, response.text
    tool_dicts = [
        {
            "type": "function",
            "function": {
                "name": t["function"]["name"],
                "description": t["function"].get("description"),
                "parameters": t["function"]["parameters"],
            },
        }
        for t in TOOLS
    ]  # fmt: skip  (as vLLM hands tools to a template: its models' dump)
    expected = tokenizer.apply_chat_template(
        as_transformers_gets_it(messages),
        tools=tool_dicts,
        chat_template=QWEN25_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
    )
    sent = tools_api.engine.prompts[tools_api.engine.started[-1]]
    assert tokenizer.decode(sent) == expected


async def test_a_history_without_tools_has_no_tool_block(plain_api, tiny_checkpoint) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    response = await plain_api.client.post(CHAT, json=body())
    assert response.status_code == 200, response.text
    expected = tokenizer.apply_chat_template(
        as_transformers_gets_it(HISTORY),
        chat_template=QWEN25_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
    )
    sent = plain_api.engine.prompts[plain_api.engine.started[-1]]
    assert tokenizer.decode(sent) == expected


async def test_audio_stays_in_every_user_turn_of_a_tool_conversation(tools_api, speech):
    clip = make_clip(speech, 2.0)
    messages = [
        {"role": "user", "content": [audio_part(clip), {"type": "text", "text": "Tag it."}]},
        HISTORY[4],
        HISTORY[5],
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, audio_part(clip)]},
    ]
    response = await tools_api.client.post(CHAT, json=body(messages=messages, tools=TOOLS))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens_details"]["audio_tokens"] == 2 * 50


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ("auto", '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser'),
        ("required", 'tool_choice="required" requires --enable-auto-tool-choice'),
        (NAMED, 'tool_choice=function "tag" requires --enable-auto-tool-choice'),
    ],
)
async def test_without_the_tool_flags_tool_choice_is_a_400(plain_api, speech, choice, message):
    response = await plain_api.client.post(
        CHAT, json=chat_body(speech, max_tokens=2) | {"tools": TOOLS, "tool_choice": choice}
    )
    error = assert_error(response, 400, "tool_choice")
    assert error["message"].startswith(message)
    assert plain_api.engine.started == []


async def test_tools_without_a_choice_default_to_auto(plain_api, speech) -> None:
    """OpenAI's default with tools is "auto", which needs the flags (as in vLLM)."""
    response = await plain_api.client.post(
        CHAT, json=chat_body(speech, max_tokens=2) | {"tools": TOOLS}
    )
    assert_error(response, 400, "tool_choice")
    none = {"tools": TOOLS, "tool_choice": "none"}
    response = await plain_api.client.post(CHAT, json=chat_body(speech, max_tokens=2) | none)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": []}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function"}]}, "tools"),
    ],
)
async def test_malformed_tools_are_400s(tools_api, speech, fields, param) -> None:
    response = await tools_api.client.post(CHAT, json=chat_body(speech, max_tokens=2) | fields)
    error = assert_error(response, 400)
    assert error["param"].startswith(param), error
    assert tools_api.engine.started == []


async def test_bad_arguments_in_the_history_are_a_400(tools_api) -> None:
    messages = [dict(HISTORY[4], tool_calls=[{"id": "c", "type": "function",
                "function": {"name": "tag", "arguments": "not json"}}])]  # fmt: skip
    response = await tools_api.client.post(CHAT, json=body(messages=[HISTORY[0], *messages]))
    assert_error(response, 400, "messages[1].tool_calls[0].function.arguments")


@pytest.mark.parametrize(
    ("choice", "finish"), [("auto", "tool_calls"), ("required", "tool_calls"), (NAMED, "stop")]
)
async def test_a_call_is_parsed_into_tool_calls(tools_api, choice, finish) -> None:
    tools_api.engine.answer_for = lambda _: "Sure." + CALL if choice == "auto" else CALL
    response = await tools_api.client.post(CHAT, json=body(tools=TOOLS, tool_choice=choice))
    assert response.status_code == 200, response.text
    (answer,) = response.json()["choices"]
    assert answer["finish_reason"] == finish
    (call,) = answer["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"] == {"name": "tag", "arguments": '{"label": "speech"}'}
    assert answer["message"]["content"] == ("Sure." if choice == "auto" else None)
    constraint = tools_api.engine.params[tools_api.engine.started[-1]].structured_outputs
    assert (constraint is None) == (choice == "auto")  # required and named: constrained


@pytest.mark.parametrize(
    ("choice", "finish"), [("auto", "tool_calls"), ("required", "tool_calls"), (NAMED, "stop")]
)
async def test_tool_call_deltas_stream_as_openai_sends_them(tools_api, choice, finish) -> None:
    tools_api.engine.answer_for = lambda _: "Sure." + CALL if choice == "auto" else CALL
    request = body(tools=TOOLS, tool_choice=choice, stream=True)
    response = await tools_api.client.post(CHAT, json=request)
    events = [json.loads(e) for e in sse_data(response)[:-1]]
    deltas = [e["choices"][0] for e in events if e["choices"]]
    pieces = [p for d in deltas for p in d["delta"].get("tool_calls") or []]
    first = pieces[0]
    assert first["index"] == 0 and first["id"] and first["type"] == "function"
    assert first["function"]["name"] == "tag"
    assert all("id" not in p and "name" not in p.get("function", {}) for p in pieces[1:])
    arguments = "".join(p["function"].get("arguments") or "" for p in pieces)
    assert json.loads(arguments) == {"label": "speech"}
    content = "".join(d["delta"].get("content") or "" for d in deltas)
    assert content == ("Sure." if choice == "auto" else "")
    assert deltas[-1]["finish_reason"] == finish


async def test_parallel_tool_calls_false_keeps_the_first_call(tools_api) -> None:
    tools_api.engine.answer_for = lambda _: CALL + CALL.replace('"tag"', '"rate"')
    response = await tools_api.client.post(
        CHAT, json=body(tools=TOOLS, tool_choice="auto", parallel_tool_calls=False)
    )
    (call,) = response.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "tag"
    response = await tools_api.client.post(CHAT, json=body(tools=TOOLS, tool_choice="auto"))
    calls = response.json()["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["tag", "rate"]


async def test_tool_choice_none_answers_text(tools_api) -> None:
    tools_api.engine.answer_for = lambda _: CALL
    response = await tools_api.client.post(CHAT, json=body(tools=TOOLS, tool_choice="none"))
    answer = response.json()["choices"][0]
    assert answer["message"]["content"] == CALL and answer["message"].get("tool_calls") is None
    assert answer["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--enable-auto-tool-choice"], "--enable-auto-tool-choice requires --tool-call-parser"),
        (["--tool-call-parser", "nope"], "--tool-call-parser nope is not a tool parser"),
    ],
)
def test_the_tool_flags_are_checked_at_start(flags, message) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_args(["--model", "m", *flags])
    config = parse_args(
        ["--model", "m", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    )
    assert config.enable_auto_tool_choice and config.tool_call_parser == "hermes"


exclude_api = server_fixture("--exclude-tools-when-tool-choice-none")


async def test_tools_left_out_of_the_prompt_for_tool_choice_none(
    exclude_api, tools_api, tiny_checkpoint
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    for server, listed in ((exclude_api, False), (tools_api, True)):
        request = body(messages=HISTORY[:1], tools=TOOLS, tool_choice="none")
        assert (await server.client.post(CHAT, json=request)).status_code == 200
        prompt = tokenizer.decode(server.engine.prompts[server.engine.started[-1]])
        assert ("# Tools" in prompt) == listed


async def test_a_tool_schema_the_backend_cannot_compile_is_a_400_naming_tools(tools_api, speech):
    bad = [
        {
            "type": "function",
            "function": {"name": "bad", "parameters": {"type": "nope"}, "strict": True},
        }
    ]
    for choice in ("required", {"type": "function", "function": {"name": "bad"}}):
        fields = {"tools": bad, "tool_choice": choice}
        response = await tools_api.client.post(CHAT, json=chat_body(speech, max_tokens=2) | fields)
        assert_error(response, 400, "tools")
    assert tools_api.engine.started == []
