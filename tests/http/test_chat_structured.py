"""Structured outputs on chat, the HTTP side on the fake engine: response_format and vLLM's
structured_outputs reach the engine as vLLM's StructuredOutputsParams (whole and streamed);
a constraint the backend cannot compile is a 400 naming its field before any engine work,
and the next request is served."""

import json

import pytest
from vllm.sampling_params import StructuredOutputsParams

from tests.support.http_helpers import CHAT, assert_error, chat_body, server_fixture, sse_data

api = server_fixture()

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["speech", "music"]}},
    "required": ["label"],
    "additionalProperties": False,
}


def constraint(api) -> StructuredOutputsParams | None:
    (request_id,) = api.engine.started[-1:]
    return api.engine.params[request_id].structured_outputs


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "tag", "schema": SCHEMA, "strict": True},
                }
            },
            {"json": SCHEMA},
        ),
        ({"response_format": {"type": "json_object"}}, {"json_object": True}),
        # vLLM's xgrammar check writes a choice as its grammar (also in vLLM's own server)
        ({"structured_outputs": {"choice": ["yes", "no"]}}, {"grammar": 'root ::= "yes" | "no"'}),
        ({"structured_outputs": {"regex": "[a-z]{3}"}}, {"regex": "[a-z]{3}"}),
        ({"structured_outputs": {"json": SCHEMA}}, {"json": SCHEMA}),
        (
            {"structured_outputs": {"grammar": 'root ::= "a" | "b"'}},
            {"grammar": 'root ::= "a" | "b"'},
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_constraints_reach_the_engine(api, speech, fields, expected, stream) -> None:
    body = chat_body(speech, max_tokens=3, stream=stream) | fields
    response = await api.client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    if stream:
        assert sse_data(response)[-1] == "[DONE]"
    params = constraint(api)
    assert params is not None
    for name, value in expected.items():
        assert getattr(params, name) == value


async def test_text_format_and_no_format_are_unconstrained(api, speech) -> None:
    for extra in ({"response_format": {"type": "text"}}, {}):
        response = await api.client.post(CHAT, json=chat_body(speech, max_tokens=2) | extra)
        assert response.status_code == 200
        assert constraint(api) is None


async def test_a_structural_tag_reaches_the_engine(api, speech) -> None:
    tag = {
        "type": "structural_tag",
        "format": {"type": "const_string", "value": "<done>"},
    }
    response = await api.client.post(
        CHAT,
        json=chat_body(speech, max_tokens=2)
        | {"structured_outputs": {"structural_tag": json.dumps(tag)}},
    )
    assert response.status_code == 200, response.text
    assert json.loads(constraint(api).structural_tag) == tag


REFUSED = [
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "no-such-type"}},
            }
        },
        "response_format",
    ),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs"),
    ({"structured_outputs": {"grammar": "root ::= ("}}, "structured_outputs"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"structural_tag": "{not json"}}, "structured_outputs"),
]


@pytest.mark.parametrize(("fields", "param"), REFUSED)
@pytest.mark.parametrize("stream", [False, True])
async def test_what_the_backend_cannot_compile_is_a_400(api, speech, fields, param, stream):
    started = len(api.engine.started)
    body = chat_body(speech, max_tokens=2, stream=stream) | fields
    error = assert_error(await api.client.post(CHAT, json=body), 400)
    assert error["param"].split(".")[0] == param, error
    assert len(api.engine.started) == started  # refused before the engine
    after = await api.client.post(CHAT, json=chat_body(speech, max_tokens=2))
    assert after.status_code == 200  # and the server goes on


# ({{ }}: server_fixture formats its flags)
guidance_api = server_fixture("--structured-outputs-config", '{{"backend": "guidance"}}')
outlines_api = server_fixture("--structured-outputs-config", '{{"backend": "outlines"}}')


async def check_backend(server, speech, backend: str) -> None:
    """--structured-outputs-config picks vLLM's backend; it checks what it is given."""
    schema = {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}
    body = chat_body(speech, max_tokens=2, response_format=schema)
    response = await server.client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    assert constraint(server)._backend == backend
    bad = {"structured_outputs": {"regex": "(unclosed"}}
    response = await server.client.post(CHAT, json=chat_body(speech, max_tokens=2) | bad)
    assert_error(response, 400, "structured_outputs")


async def test_the_guidance_backend(guidance_api, speech) -> None:
    await check_backend(guidance_api, speech, "guidance")


async def test_the_outlines_backend(outlines_api, speech) -> None:
    await check_backend(outlines_api, speech, "outlines")
