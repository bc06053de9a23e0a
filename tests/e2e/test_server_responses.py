"""The Responses API on a real af3-serve through the official `openai` client: audio in
`input_audio` and `input_file` parts, a conversation through `previous_response_id`, and a
stream, each equal to what the chat endpoint answers for the same conversation (greedy)."""

import base64

import openai
import pytest

from af3_model_executor.constants import DEFAULT_SERVED_MODEL_NAME as MODEL
from tests.support.audio_files import audio_part, encode, make_clip

QUESTION = "What is said in the audio?"


def test_audio_and_a_second_turn_answer_as_chat_does(client, speech) -> None:
    wav = encode(make_clip(speech, 12.0), "wav")
    data = base64.b64encode(wav).decode()
    first = client.responses.create(
        model=MODEL,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                    {"type": "input_text", "text": QUESTION},
                ],
            }
        ],
        max_output_tokens=6,
        temperature=0,
    )
    chat_messages = [
        {
            "role": "user",
            "content": [audio_part(make_clip(speech, 12.0)), {"type": "text", "text": QUESTION}],
        },
    ]
    chat = client.chat.completions.create(
        model=MODEL, messages=chat_messages, max_tokens=6, temperature=0
    )
    assert first.output_text == chat.choices[0].message.content
    assert first.usage.input_tokens == chat.usage.prompt_tokens
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_file",
                        "filename": "clip.wav",
                        "file_data": f"data:audio/wav;base64,{data}",
                    },
                    {"type": "input_text", "text": "And this one?"},
                ],
            }
        ],
        max_output_tokens=6,
        temperature=0,
    )
    chat_messages = [
        chat_messages[0],
        {"role": "assistant", "content": first.output_text},
        {
            "role": "user",
            "content": [
                audio_part(make_clip(speech, 12.0)),
                {"type": "text", "text": "And this one?"},
            ],
        },
    ]
    chat = client.chat.completions.create(
        model=MODEL, messages=chat_messages, max_tokens=6, temperature=0
    )
    assert second.output_text == chat.choices[0].message.content
    assert second.usage.input_tokens == chat.usage.prompt_tokens
    # The stored turn's audio comes from the prefix cache (instructions would change the
    # prefix: they are not carried to the next response, as OpenAI's are not).
    assert second.usage.input_tokens_details.cached_tokens > 0
    assert client.responses.retrieve(second.id).output_text == second.output_text


def test_a_stream_through_the_client(client) -> None:
    whole = client.responses.create(
        model=MODEL, input="Name a bird.", max_output_tokens=5, temperature=0
    )
    events = list(
        client.responses.create(
            model=MODEL, input="Name a bird.", max_output_tokens=5, temperature=0, stream=True
        )
    )
    assert events[0].type == "response.created"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text
    assert events[-1].response.output_text == text


def test_a_refusal_leaves_the_server_serving(client) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_unknown")
    assert refused.value.body["param"] == "previous_response_id"
    assert client.responses.create(model=MODEL, input="Still here?", max_output_tokens=1).id
