"""/tokenize, /detokenize and /v1/completions on a real af3-serve, through the official
`openai` client where it has the endpoint: the counts and the prompts are the engine's."""

import httpx
import openai
import pytest

from af3_model_executor.constants import DEFAULT_SERVED_MODEL_NAME as MODEL
from tests.support.audio_files import audio_part, make_clip
from tests.support.server import API_KEY

QUESTION = "What is said in the audio?"


def post(server, path: str, body: dict) -> dict:
    response = httpx.post(
        f"{server.url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_tokenize_counts_what_the_chat_answer_used(server, client, speech) -> None:
    messages = [
        {
            "role": "user",
            "content": [audio_part(make_clip(speech, 31.0)), {"type": "text", "text": QUESTION}],
        }
    ]
    counted = post(server, "/tokenize", {"model": MODEL, "messages": messages})
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert counted["count"] == reply.usage.prompt_tokens
    (audio_id,) = post(server, "/tokenize", {"model": MODEL, "prompt": "<sound>"})["tokens"]
    assert counted["tokens"].count(audio_id) == reply.usage.prompt_tokens_details.audio_tokens
    back = post(server, "/detokenize", {"model": MODEL, "tokens": counted["tokens"][-6:]})
    assert back["prompt"].endswith("assistant\n")


def test_a_completion_of_the_chat_prompt_is_the_chat_answer(server, client) -> None:
    """Greedy: the chat template's prompt, sent as token ids to /v1/completions, continues
    exactly as the chat endpoint answers the same messages."""
    messages = [{"role": "user", "content": "Say something about birds."}]
    prompt = post(server, "/tokenize", {"model": MODEL, "messages": messages})["tokens"]
    chat = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0
    )
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    assert whole.choices[0].text == chat.choices[0].message.content
    assert whole.usage.prompt_tokens == chat.usage.prompt_tokens
    stream = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == whole.choices[0].text


def test_a_text_prompt_and_its_refusal(client) -> None:
    answer = client.completions.create(
        model=MODEL, prompt=["Once upon a time", "The sound of"], max_tokens=3, echo=True
    )
    texts = [c.text for c in sorted(answer.choices, key=lambda c: c.index)]
    assert texts[0].startswith("Once upon a time") and texts[1].startswith("The sound of")
    assert answer.usage.completion_tokens == 6
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, prompt="Listen: <sound>", max_tokens=2)
    assert refused.value.body["param"] == "prompt"
    assert client.completions.create(model=MODEL, prompt="Still here", max_tokens=1).choices
