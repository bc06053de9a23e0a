"""Structured outputs and tools end to end: the official `openai` client against a real
af3-serve (CPU build, tiny random-weight checkpoint) started as `vllm serve` would be for
them: `--enable-auto-tool-choice --tool-call-parser hermes` and xgrammar without free
whitespace (`--structured-outputs-config`), so random weights still finish their JSON. Tool
calls are constrained by vLLM's structural tags, whose JSON allows whitespace whatever the
engine flag says: those requests push whitespace tokens down with `logit_bias`.
Constrained answers parse and validate against their schemas; every refusal is a 400 naming
its field, and the engine lives on and answers the next constrained request."""

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from benchmarks.structured_cost import SCHEMA
from tests.support.audio_files import audio_part, b64, make_clip
from tests.support.server import API_KEY, start_server

pytestmark = pytest.mark.engine

MODEL = "audio-flamingo-3"
LABEL = SCHEMA  # the structured-output benchmark's tagging schema
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "tag_audio",
            "description": "Tag the recording.",
            "parameters": LABEL,
            "strict": True,  # arguments pinned to the schema (OpenAI's and vLLM's meaning)
        },
    },
    {
        "type": "function",
        "function": {
            "name": "rate",
            "parameters": {
                "type": "object",
                "properties": {"stars": {"type": "integer", "enum": [1, 2, 3]}},
                "required": ["stars"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    },
]


@pytest.fixture(scope="module")
def tool_server(tiny_checkpoint: Path, tmp_path_factory) -> Iterator[object]:
    log = tmp_path_factory.mktemp("tool-server") / "af3-serve.log"
    process = start_server(
        tiny_checkpoint,
        log,
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--structured-outputs-config",
        '{"backend": "xgrammar", "disable_any_whitespace": true}',
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def llm_client(tool_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tool_server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def no_whitespace(tiny_checkpoint: Path) -> dict:
    """extra_body for tool requests: every whitespace-only token at a bias of -100."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    ids = [i for i in range(len(tokenizer)) if (t := tokenizer.decode([i])) and not t.strip()]
    return {"logit_bias": {str(i): -100 for i in ids}}


def question(speech, text: str = "Tag this recording.") -> list[dict]:
    clip = make_clip(speech, 4.0)
    return [{"role": "user", "content": [audio_part(clip), {"type": "text", "text": text}]}]


def sampled(speech, seed: int, **kwargs) -> dict:
    """A chat request about a recording, sampled (temperature 1) with `seed`."""
    return dict(model=MODEL, messages=question(speech), temperature=1.0, seed=seed, **kwargs)


def healthy(server) -> bool:
    return httpx.get(f"{server.url}/health", timeout=10).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_validate(llm_client, speech, stream) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "tag", "schema": LABEL, "strict": True},
    }
    kwargs = sampled(speech, seed=1, max_tokens=60, response_format=response_format)
    if stream:
        chunks = list(llm_client.chat.completions.create(**kwargs, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        reply = llm_client.chat.completions.create(**kwargs)
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), LABEL)


def test_json_object_choice_and_regex(llm_client, speech) -> None:
    reply = llm_client.chat.completions.create(
        model=MODEL,
        messages=question(speech, "Yes or no?"),
        max_tokens=10,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )
    assert reply.choices[0].message.content in ("yes", "no")
    reply = llm_client.chat.completions.create(
        model=MODEL,
        messages=question(speech, "A date?"),
        max_tokens=20,
        extra_body={"structured_outputs": {"regex": r"20[0-9]{2}-[01][0-9]"}},
    )
    assert re.fullmatch(r"20[0-9]{2}-[01][0-9]", reply.choices[0].message.content)
    reply = llm_client.chat.completions.create(
        model=MODEL,
        messages=question(speech),
        max_tokens=200,
        response_format={"type": "json_object"},
    )
    text = reply.choices[0].message.content
    if reply.choices[0].finish_reason == "stop":  # random weights may fill a long object
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{")


def test_a_named_function_is_called_with_valid_arguments(llm_client, speech, no_whitespace):
    reply = llm_client.chat.completions.create(
        extra_body=no_whitespace,
        model=MODEL,
        messages=question(speech),
        max_tokens=200,  # the tiny vocabulary spends about a token a character
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "tag_audio"}},
    )
    choice = reply.choices[0]
    (call,) = choice.message.tool_calls
    assert call.function.name == "tag_audio" and call.id
    jsonschema.validate(json.loads(call.function.arguments), LABEL)
    assert choice.finish_reason == "stop"  # OpenAI's, for a named function


@pytest.mark.parametrize("stream", [False, True])
def test_required_tool_calls_validate(llm_client, speech, no_whitespace, stream) -> None:
    kwargs = dict(
        extra_body=no_whitespace,
        model=MODEL,
        messages=question(speech),
        max_tokens=200,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        for chunk in llm_client.chat.completions.create(**kwargs, stream=True):
            if not chunk.choices:
                continue
            finish = chunk.choices[0].finish_reason or finish
            for piece in chunk.choices[0].delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"name": "", "arguments": ""})
                if piece.function.name:
                    call["name"] += piece.function.name
                call["arguments"] += piece.function.arguments or ""
        got = [(c["name"], c["arguments"]) for c in calls.values()]
    else:
        reply = llm_client.chat.completions.create(**kwargs)
        finish = reply.choices[0].finish_reason
        got = [(c.function.name, c.function.arguments) for c in reply.choices[0].message.tool_calls]
    assert finish == "tool_calls"
    assert len(got) == 1
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    name, arguments = got[0]
    jsonschema.validate(json.loads(arguments), schemas[name])


def test_a_tool_conversation_with_audio_in_two_turns(llm_client, speech, no_whitespace):
    history = question(speech) + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "tag_audio",
                        "arguments": '{"label": "speech", "loud": false}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"saved": true}'},
        question(speech, "And this one?")[0],
    ]
    reply = llm_client.chat.completions.create(
        extra_body=no_whitespace,
        model=MODEL,
        messages=history,
        max_tokens=200,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    assert reply.choices[0].message.tool_calls
    assert reply.usage.prompt_tokens_details.audio_tokens == 2 * 100  # two 4-s clips


REFUSALS = [
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nope"}},
            }
        },
        "response_format",
    ),
    ({"extra_body": {"structured_outputs": {"regex": "(unclosed"}}}, "structured_outputs"),
    ({"extra_body": {"structured_outputs": {"grammar": "root ::= ("}}}, "structured_outputs"),
    ({"extra_body": {"structured_outputs": {"choice": []}}}, "structured_outputs"),
    (
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice",
    ),
    ({"extra_body": {"logit_bias": {"99999999": 5}}}, "logit_bias"),
]


@pytest.mark.parametrize("stream", [False, True])
def test_refusals_are_400s_and_the_engine_lives_on(tool_server, llm_client, speech, stream):
    for kwargs, param in REFUSALS:
        with pytest.raises(openai.BadRequestError) as refused:
            llm_client.chat.completions.create(
                model=MODEL, messages=question(speech), max_tokens=5, stream=stream, **kwargs
            )
        assert refused.value.body["param"].split(".")[0] == param, refused.value.body
        assert healthy(tool_server)
    reply = llm_client.chat.completions.create(
        model=MODEL,
        messages=question(speech),
        max_tokens=10,
        extra_body={"structured_outputs": {"choice": ["speech", "music"]}},
    )
    assert reply.choices[0].message.content in ("speech", "music")


def test_logprob_bytes_prompt_logprobs_and_continuous_usage(llm_client, speech) -> None:
    """The rest of vLLM's chat parameters on the real engine: random weights answer in
    stray bytes, whose logprobs' bytes still rebuild the text."""
    extra = {"prompt_logprobs": 0, "min_p": 0.01, "bad_words": ["zz"]}
    reply = llm_client.chat.completions.create(
        **sampled(speech, seed=3, max_tokens=24, logprobs=True, top_logprobs=2, extra_body=extra)
    )
    choice = reply.choices[0]
    raw = bytes(b for entry in choice.logprobs.content for b in entry.bytes)
    assert raw.decode(errors="replace") == choice.message.content
    prompt_logprobs = reply.model_extra["prompt_logprobs"]
    assert len(prompt_logprobs) == reply.usage.prompt_tokens and prompt_logprobs[0] is None
    chunks = list(
        llm_client.chat.completions.create(
            model=MODEL,
            messages=question(speech),
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )
    )
    assert all(c.usage is not None for c in chunks)
    assert chunks[-1].usage.completion_tokens == 5


# The Responses API on the same server: its text.format and function tools are chat's.
RESPONSE_TOOLS = [{"type": "function", **t["function"]} for t in TOOLS]


def audio_input(speech, text: str = "Tag this recording.") -> list[dict]:
    data = b64(make_clip(speech, 4.0))
    return [
        {
            "role": "user",
            "content": [
                {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                {"type": "input_text", "text": text},
            ],
        }
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_a_response_in_a_json_schema(llm_client, speech, stream) -> None:
    fmt = {"type": "json_schema", "name": "label", "schema": LABEL, "strict": True}
    kwargs = dict(
        model=MODEL, input=audio_input(speech), max_output_tokens=200, text={"format": fmt}
    )
    if stream:
        events = list(llm_client.responses.create(**kwargs, stream=True))
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    else:
        text = llm_client.responses.create(**kwargs).output_text
    jsonschema.validate(json.loads(text), LABEL)


@pytest.mark.parametrize("stream", [False, True])
def test_a_response_calls_a_named_function(llm_client, speech, stream) -> None:
    kwargs = dict(
        model=MODEL,
        input=audio_input(speech),
        max_output_tokens=200,
        tools=RESPONSE_TOOLS,
        tool_choice={"type": "function", "name": "tag_audio"},
    )
    if stream:
        events = list(llm_client.responses.create(**kwargs, stream=True))
        (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
        arguments = done.arguments
        response = events[-1].response
    else:
        response = llm_client.responses.create(**kwargs)
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "tag_audio" and call.call_id
    jsonschema.validate(json.loads(call.arguments), LABEL)
    if stream:
        assert arguments == call.arguments
    # The call's result goes back as an input item; the conversation goes on.
    follow = llm_client.responses.create(
        model=MODEL,
        previous_response_id=response.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "ok"}],
        max_output_tokens=4,
        tools=RESPONSE_TOOLS,
        tool_choice="none",
    )
    assert follow.output[0].type == "message"
