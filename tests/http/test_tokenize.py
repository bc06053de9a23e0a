"""POST /tokenize and /detokenize in-process on the fake engine: counts equal what the chat
endpoint's usage says for the same messages, audio included, and nothing reaches the engine."""

from af3_model_executor.audio_spec import AudioSpec
from tests.support.http_helpers import (
    CHAT,
    MODEL,
    THINK_MODEL,
    assert_error,
    chat_body,
    server_fixture,
)

api = server_fixture()
TOKENIZE = "/tokenize"


async def tokenize(api, **body) -> dict:
    response = await api.client.post(TOKENIZE, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_chat_messages_count_as_the_chat_answer_does(api, speech) -> None:
    body = chat_body(speech, 61.0, max_tokens=3)
    for model in (MODEL, THINK_MODEL):  # thinking mode adds its sentence to the question
        counted = await tokenize(api, model=model, messages=body["messages"])
        answer = await api.client.post(CHAT, json=body | {"model": model})
        assert answer.status_code == 200, answer.text
        assert counted["count"] == answer.json()["usage"]["prompt_tokens"]
        assert counted["tokens"] == api.engine.prompts[api.engine.started[-1]]
    audio_tokens = counted["tokens"].count(api.app.state.runtime.audio_token_id)
    assert audio_tokens == AudioSpec().num_audio_tokens(61 * 16000)
    assert counted["max_model_len"] == api.app.state.runtime.models.max_model_len


async def test_nothing_reaches_the_engine(api, speech) -> None:
    started = len(api.engine.started)
    await tokenize(api, messages=chat_body(speech)["messages"])
    await tokenize(api, prompt="Hello there.")
    assert len(api.engine.started) == started


async def test_a_text_prompt_and_back(api) -> None:
    text = "Ünïcode and a question: what is said?"
    counted = await tokenize(api, prompt=text, return_token_strs=True)
    tokenizer = api.app.state.runtime.inputs.tokenizer
    assert counted["tokens"] == tokenizer.encode(text)
    assert counted["token_strs"] == tokenizer.convert_ids_to_tokens(counted["tokens"])
    back = await api.client.post("/detokenize", json={"model": MODEL, "tokens": counted["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": text}


async def test_generation_prompt_and_continued_message(api) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, I"}]
    tokenizer = api.app.state.runtime.inputs.tokenizer
    open_ended = await tokenize(
        api, messages=messages, add_generation_prompt=False, continue_final_message=True
    )
    assert tokenizer.decode(open_ended["tokens"]).endswith("Hello, I")
    closed = await tokenize(api, messages=messages, add_generation_prompt=False)
    assert tokenizer.decode(closed["tokens"]).endswith("<|im_end|>\n")


async def test_refusals(api, speech) -> None:
    cases = [
        ({"prompt": "x", "model": "nope"}, 404, "model"),
        (
            {"messages": [{"role": "user", "content": "x"}], "thinking": True, "model": MODEL},
            200,
            None,
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "continue_final_message": True},
            400,
            "continue_final_message",
        ),
        ({"prompt": "x", "unknown_field": 1}, 400, None),
        ({}, 400, None),
    ]
    for body, status, param in cases:
        response = await api.client.post(TOKENIZE, json=body)
        if status == 200:
            assert response.status_code == 200, response.text
        else:
            assert_error(response, status, param)
    bad_audio = chat_body(speech)
    bad_audio["messages"][0]["content"][0]["input_audio"]["data"] = "bm90IGF1ZGlv"
    assert_error(
        await api.client.post(TOKENIZE, json=bad_audio),
        400,
        "messages[0].content[0].input_audio.data",
    )
    vocabulary = len(api.app.state.runtime.inputs.tokenizer)
    too_big = await api.client.post("/detokenize", json={"tokens": [1, vocabulary]})
    assert_error(too_big, 400, "tokens", "invalid_token_id")
    no_key = await api.client.post(TOKENIZE, json={"prompt": "x"}, headers={"Authorization": ""})
    assert_error(no_key, 401)
