"""POST /v1/responses in-process on the fake engine: the input becomes the chat prompt the
chat endpoint would render (instructions, stored turns, audio from input_audio and
input_file), whole and streamed with OpenAI's event names, and the refusals."""

import base64
import json

import tests.support.http_helpers as h
from tests.support.audio_files import encode, make_clip

api = h.server_fixture()
RESPONSES = "/v1/responses"


async def respond(api, **body) -> dict:
    response = await api.client.post(RESPONSES, json={"model": h.MODEL} | body)
    assert response.status_code == 200, response.text
    return response.json()


def last_prompt(api) -> list[int]:
    return api.engine.prompts[api.engine.started[-1]]


def wav_b64(speech, seconds: float) -> str:
    return base64.b64encode(encode(make_clip(speech, seconds), "wav")).decode()


async def test_text_with_instructions_is_the_chat_prompt(api) -> None:
    answer = await respond(api, input="Hello?", instructions="Be brief.", max_output_tokens=3)
    assert answer["object"] == "response" and answer["id"].startswith("resp")
    assert answer["status"] == "incomplete"  # the fake engine fills max_output_tokens
    assert answer["incomplete_details"] == {"reason": "max_output_tokens"}
    (message,) = answer["output"]
    assert message["content"][0]["text"] == h.answer_text(api.engine, 3)
    chat = {
        "model": h.MODEL,
        "max_tokens": 3,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello?"},
        ],
    }
    via_responses = last_prompt(api)
    assert (await api.client.post(h.CHAT, json=chat)).status_code == 200
    assert last_prompt(api) == via_responses
    assert answer["usage"]["input_tokens"] == len(via_responses)
    assert answer["usage"]["output_tokens"] == 3


async def test_audio_parts_and_a_stored_turn(api, speech) -> None:
    audio = wav_b64(speech, 4.0)
    first = await respond(
        api,
        max_output_tokens=2,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                    {"type": "input_text", "text": h.QUESTION},
                ],
            }
        ],
    )
    audio_id = api.app.state.runtime.audio_token_id
    assert (
        first["usage"]["input_tokens_details"]["audio_tokens"]
        == last_prompt(api).count(audio_id)
        > 0
    )
    file_part = {"type": "input_file", "file_data": f"data:audio/wav;base64,{audio}"}
    second = await respond(
        api,
        previous_response_id=first["id"],
        max_output_tokens=2,
        input=[{"role": "user", "content": [file_part, {"type": "input_text", "text": "And?"}]}],
    )
    # The whole conversation: both audios, the first answer between them.
    prompt = last_prompt(api)
    assert prompt.count(audio_id) == 2 * first["usage"]["input_tokens_details"]["audio_tokens"]
    said = api.app.state.runtime.inputs.tokenizer.encode(first["output"][0]["content"][0]["text"])
    assert any(prompt[i : i + len(said)] == said for i in range(len(prompt)))
    stored = await api.client.get(f"{RESPONSES}/{second['id']}")
    assert stored.status_code == 200 and stored.json()["id"] == second["id"]
    assert (await api.client.delete(f"{RESPONSES}/{first['id']}")).status_code == 200
    gone = await api.client.post(
        RESPONSES, json={"model": h.MODEL, "input": "x", "previous_response_id": first["id"]}
    )
    h.assert_error(gone, 400, "previous_response_id", "previous_response_not_found")


async def test_a_stream_has_openai_events(api) -> None:
    body = {"model": h.MODEL, "input": "Hi", "max_output_tokens": 3, "stream": True}
    response = await api.client.post(RESPONSES, json=body)
    assert response.status_code == 200, response.text
    events = [json.loads(e) for e in h.sse_data(response)]
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == h.answer_text(api.engine, 3) == events[-4]["text"]
    final = events[-1]["response"]
    assert final["usage"]["output_tokens"] == 3
    stored = await api.client.get(f"{RESPONSES}/{final['id']}")
    assert stored.json()["output"][0]["content"][0]["text"] == deltas


async def test_not_stored_when_asked(api) -> None:
    answer = await respond(api, input="Hi", max_output_tokens=1, store=False)
    assert answer["store"] is False
    assert (await api.client.get(f"{RESPONSES}/{answer['id']}")).status_code == 404


async def test_refusals(api, speech) -> None:
    audio = wav_b64(speech, 1.0)
    bad_audio = {"type": "input_audio", "input_audio": {"data": "bm9wZQ==", "format": "wav"}}
    cases = [
        ({"input": "x", "model": "nope"}, 404, "model"),
        ({"input": []}, 400, "input"),
        (
            {"input": [{"role": "user", "content": [bad_audio]}]},
            400,
            "input[0].content[0].input_audio.data",
        ),
        (
            {"input": [{"role": "assistant", "content": [bad_audio]}]},
            400,
            "input[0].content",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            400,
            "input[0].content[0]",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_data": audio}]}]},
            400,
            "input[0].content[0]",
        ),
        # As chat: tools need the server's tool-call parser (vLLM's flags).
        ({"input": "x", "tools": [{"type": "function", "name": "f"}]}, 400, "tool_choice"),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
            400,
            "text.format.json_schema.schema",  # pydantic names the union member
        ),
        (
            {
                "input": "x",
                "text": {
                    "format": {"type": "json_schema", "name": "n", "schema": {"type": "nonsense"}}
                },
            },
            400,
            "text.format",
        ),
        ({"input": "x", "previous_response_id": "resp_nope"}, 400, "previous_response_id"),
        ({"input": "x", "unknown": 1}, 400, "unknown"),
    ]
    for body, status, param in cases:
        h.assert_error(
            await api.client.post(RESPONSES, json={"model": h.MODEL} | body), status, param
        )
    named = {"type": "input_file", "file_data": audio, "filename": "clip.wav"}
    fine = await respond(api, input=[{"role": "user", "content": [named]}], max_output_tokens=1)
    assert fine["usage"]["input_tokens_details"]["audio_tokens"] > 0


async def test_text_format_becomes_the_chat_constraint(api) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    await respond(api, input="Give a.", max_output_tokens=2, text={"format": fmt})
    constraint = api.engine.params[api.engine.started[-1]].structured_outputs
    assert (
        json.loads(constraint.json) == schema
        if isinstance(constraint.json, str)
        else (constraint.json == schema)
    )
    await respond(
        api, input="Any JSON.", max_output_tokens=2, text={"format": {"type": "json_object"}}
    )
    assert api.engine.params[api.engine.started[-1]].structured_outputs.json_object


async def test_function_calls_and_their_outputs_are_tool_turns(api) -> None:
    """A call the model made and its result, sent back as input items, render as the chat
    endpoint renders the same tool turns."""
    call = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"a": 1}'}
    result = {"type": "function_call_output", "call_id": "call_1", "output": "42"}
    await respond(
        api, input=[{"role": "user", "content": "Use f."}, call, result], max_output_tokens=2
    )
    via_responses = last_prompt(api)
    chat = {
        "model": h.MODEL,
        "max_tokens": 2,
        "messages": [
            {"role": "user", "content": "Use f."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ],
    }
    assert (await api.client.post(h.CHAT, json=chat)).status_code == 200
    assert last_prompt(api) == via_responses
