"""The rest of vLLM's chat parameters, the HTTP side on the fake engine: sampling extensions
reach the engine, logprobs carry each token's raw bytes, prompt logprobs and continuous
usage come back, the chat-template controls shape the prompt, and what is refused is a 400
naming it."""

import json

import pytest
from transformers import AutoTokenizer

import tests.support.http_helpers as h

api = h.server_fixture()
token_ids_api = h.server_fixture("--return-tokens-as-token-ids")


def last_params(api):
    return api.engine.params[api.engine.started[-1]]


async def test_sampling_extensions_reach_the_engine(api, speech) -> None:
    extra = {
        "logit_bias": {"5": 2.5, "7": -100},
        "min_p": 0.05,
        "allowed_token_ids": [5, 6, 7],
        "bad_words": ["fox"],
    }
    response = await api.client.post(h.CHAT, json=h.chat_body(speech, max_tokens=2) | extra)
    assert response.status_code == 200, response.text
    params = last_params(api)
    assert params.logit_bias == {5: 2.5, 7: -100}
    assert params.min_p == 0.05
    assert params.allowed_token_ids == [5, 6, 7]
    assert params.bad_words == ["fox"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"allowed_token_ids": [10**9]}, "allowed_token_ids"),
        ({"min_p": 2}, "min_p"),
        ({"prompt_logprobs": -5}, "prompt_logprobs"),
        ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
        ({"chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
        ({"use_beam_search": True}, "use_beam_search"),
        ({"logprob_token_ids": [1]}, "logprob_token_ids"),
        ({"documents": []}, "documents"),
        ({"chat_template": "{{ 1 }}"}, "chat_template"),
    ],
)
async def test_refused_values_and_parameters_are_400s_naming_them(api, speech, extra, param):
    response = await api.client.post(h.CHAT, json=h.chat_body(speech, max_tokens=2) | extra)
    error = h.assert_error(response, 400)
    assert (error["param"] or "").startswith(param), error
    assert api.engine.started == []


async def test_both_generation_prompt_and_continuation_is_a_400(api, speech) -> None:
    both = {"add_generation_prompt": True, "continue_final_message": True}
    response = await api.client.post(h.CHAT, json=h.chat_body(speech, max_tokens=2) | both)
    h.assert_error(response, 400)


async def test_logprob_bytes_rebuild_the_text(api, speech) -> None:
    """A token that is part of a UTF-8 character has no text; its bytes are still there."""
    text = "é ü ∑ 音"
    api.engine.answer_for = lambda _: text
    body = h.chat_body(speech, max_tokens=50, logprobs=True, top_logprobs=2)
    answer = (await api.client.post(h.CHAT, json=body)).json()["choices"][0]
    assert answer["message"]["content"] == text
    entries = answer["logprobs"]["content"]
    assert bytes(b for e in entries for b in e["bytes"]).decode() == text
    assert any(len(e["bytes"]) == 1 and e["bytes"][0] >= 0x80 for e in entries)
    assert all(e["bytes"] and len(e["top_logprobs"]) == 2 for e in entries)
    assert all(t["bytes"] for e in entries for t in e["top_logprobs"])


async def test_tokens_as_token_ids(api, token_ids_api, speech, tiny_checkpoint) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    body = h.chat_body(speech, max_tokens=3, logprobs=True)
    ids = tokenizer.encode(" The quick", add_special_tokens=False)[:3]
    for server, extra in ((api, {"return_tokens_as_token_ids": True}), (token_ids_api, {})):
        answer = (await server.client.post(h.CHAT, json=body | extra)).json()["choices"][0]
        assert [e["token"] for e in answer["logprobs"]["content"]] == [f"token_id:{i}" for i in ids]
    off = {"return_tokens_as_token_ids": False}
    answer = (await token_ids_api.client.post(h.CHAT, json=body | off)).json()["choices"][0]
    assert not answer["logprobs"]["content"][0]["token"].startswith("token_id:")


async def test_prompt_logprobs(api, speech) -> None:
    response = await api.client.post(
        h.CHAT, json=h.chat_body(speech, max_tokens=2, prompt_logprobs=0)
    )
    reply = response.json()
    prompt = reply["prompt_logprobs"]
    assert len(prompt) == reply["usage"]["prompt_tokens"] and prompt[0] is None
    (token, entry), = prompt[1].items()  # fmt: skip
    assert int(token) == api.engine.prompts[api.engine.started[-1]][1]
    assert entry["logprob"] == -2.0 and entry["rank"] == 1
    assert last_params(api).prompt_logprobs == 0


async def test_continuous_usage_stats(api, speech) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = h.chat_body(speech, max_tokens=4, stream=True, stream_options=options)
    events = [json.loads(e) for e in h.sse_data(await api.client.post(h.CHAT, json=body))[:-1]]
    assert all(e["usage"] for e in events)
    counts = [e["usage"]["completion_tokens"] for e in events]
    assert counts == sorted(counts) and counts[-1] == 4 and counts[0] == 0
    assert {e["usage"]["prompt_tokens"] for e in events} == {events[-1]["usage"]["prompt_tokens"]}


def prompt_text(api, tiny_checkpoint) -> str:
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    return tokenizer.decode(api.engine.prompts[api.engine.started[-1]])


async def test_continue_final_message_with_echo(api, tiny_checkpoint) -> None:
    messages = [
        {"role": "user", "content": "Describe the sound."},
        {"role": "assistant", "content": "The sound is"},
    ]
    body = {
        "model": h.MODEL,
        "messages": messages,
        "max_tokens": 3,
        "add_generation_prompt": False,
        "continue_final_message": True,
        "echo": True,
    }
    reply = (await api.client.post(h.CHAT, json=body)).json()
    assert prompt_text(api, tiny_checkpoint).endswith("<|im_start|>assistant\nThe sound is")
    assert reply["choices"][0]["message"]["content"].startswith("The sound is")
    assert reply["choices"][0]["message"]["role"] == "assistant"
    events = h.sse_data(await api.client.post(h.CHAT, json=body | {"stream": True}))
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[1] == {"content": "The sound is"}


async def test_without_a_generation_prompt(api, tiny_checkpoint) -> None:
    body = {
        "model": h.MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "add_generation_prompt": False,
    }
    assert (await api.client.post(h.CHAT, json=body)).status_code == 200
    assert prompt_text(api, tiny_checkpoint).endswith("Hi<|im_end|>\n")
    # echo: the answer continues the user's turn, as vLLM's server says it
    reply = (await api.client.post(h.CHAT, json=body | {"echo": True})).json()
    assert reply["choices"][0]["message"]["role"] == "user"
    assert reply["choices"][0]["message"]["content"].startswith("Hi")


async def test_chat_template_kwargs_reach_the_template(api, speech) -> None:
    body = h.chat_body(speech, max_tokens=2, chat_template_kwargs={"enable_thinking": False})
    assert (await api.client.post(h.CHAT, json=body)).status_code == 200
