"""POST /v1/completions in-process on the fake engine: text and token-id prompts, several at
once, whole and streamed, echo, logprobs, the thinking LoRA, and the refusals."""

import json

import pytest

from tests.support.http_helpers import (
    MODEL,
    THINK_MODEL,
    answer_text,
    assert_error,
    server_fixture,
    sse_data,
)

api = server_fixture()
COMPLETIONS = "/v1/completions"
PROMPT = "The recording says"


async def complete(api, **body) -> dict:
    response = await api.client.post(COMPLETIONS, json={"model": MODEL} | body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_text_prompt(api) -> None:
    answer = await complete(api, prompt=PROMPT, max_tokens=4)
    tokenizer = api.app.state.runtime.inputs.tokenizer
    assert answer["object"] == "text_completion" and answer["id"].startswith("cmpl-")
    (choice,) = answer["choices"]
    assert choice["text"] == answer_text(api.engine, 4)
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert api.engine.prompts[api.engine.started[-1]] == tokenizer.encode(PROMPT)
    usage = answer["usage"]
    assert usage["prompt_tokens"] == len(tokenizer.encode(PROMPT))
    assert usage["completion_tokens"] == 4 and usage["total_tokens"] == usage["prompt_tokens"] + 4


async def test_the_default_answer_is_sixteen_tokens(api) -> None:
    answer = await complete(api, prompt=PROMPT)
    assert answer["usage"]["completion_tokens"] == 16  # OpenAI's default for this endpoint


async def test_several_prompts_each_n_times(api) -> None:
    tokenizer = api.app.state.runtime.inputs.tokenizer
    ids = tokenizer.encode("Token ids too")
    answer = await complete(api, prompt=[PROMPT, "Another one", ids], max_tokens=2, n=2)
    assert [c["index"] for c in answer["choices"]] == list(range(6))
    prompts = [api.engine.prompts[r] for r in api.engine.started[-3:]]
    assert prompts == [tokenizer.encode(PROMPT), tokenizer.encode("Another one"), ids]
    assert answer["usage"]["completion_tokens"] == 12


async def test_echo_and_logprobs(api) -> None:
    echoed = await complete(api, prompt=PROMPT, max_tokens=3, echo=True)
    assert echoed["choices"][0]["text"] == PROMPT + answer_text(api.engine, 3)
    with_logprobs = await complete(api, prompt=PROMPT, max_tokens=3, logprobs=2)
    logprobs = with_logprobs["choices"][0]["logprobs"]
    assert "".join(logprobs["tokens"]) == with_logprobs["choices"][0]["text"]
    assert logprobs["token_logprobs"] == [-0.5] * 3
    assert all(len(top) == 2 for top in logprobs["top_logprobs"])
    offsets = [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(3)]
    assert logprobs["text_offset"] == offsets


@pytest.mark.parametrize("echo", [False, True])
async def test_a_stream(api, echo: bool) -> None:
    body = {
        "model": MODEL,
        "prompt": [PROMPT, "Second"],
        "max_tokens": 3,
        "stream": True,
        "echo": echo,
        "stream_options": {"include_usage": True},
    }
    response = await api.client.post(COMPLETIONS, json=body)
    assert response.status_code == 200, response.text
    events = sse_data(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    texts: dict[int, str] = {}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    prefix = [PROMPT, "Second"] if echo else ["", ""]
    assert texts == {i: prefix[i] + answer_text(api.engine, 3) for i in range(2)}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


async def test_the_thinking_model_runs_its_lora(api) -> None:
    await complete(api, model=THINK_MODEL, prompt=PROMPT, max_tokens=1)
    assert api.engine.lora[api.engine.started[-1]] is not None
    await complete(api, prompt=PROMPT, max_tokens=1)
    assert api.engine.lora[api.engine.started[-1]] is None


async def test_refusals(api) -> None:
    vocabulary = len(api.app.state.runtime.inputs.tokenizer)
    context = api.app.state.runtime.inputs.max_model_len
    cases = [
        ({"prompt": PROMPT, "model": "nope"}, 404, "model"),
        ({"prompt": ""}, 400, "prompt"),
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": [1, vocabulary]}, 400, "prompt"),
        ({"prompt": ["fine", [vocabulary]]}, 400, "prompt[1]"),
        ({"prompt": "Listen: <sound>"}, 400, "prompt"),
        ({"prompt": PROMPT, "max_tokens": context}, 400, "max_tokens"),
        ({"prompt": PROMPT, "echo": True, "logprobs": 1}, 400, "echo"),
        ({"prompt": PROMPT, "suffix": "x"}, 400, "suffix"),
        ({"prompt": PROMPT, "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ]
    started = len(api.engine.started)
    for body, status, param in cases:
        response = await api.client.post(COMPLETIONS, json={"model": MODEL} | body)
        assert_error(response, status, param)
    assert len(api.engine.started) == started
    no_key = await api.client.post(
        COMPLETIONS, json={"model": MODEL, "prompt": "x"}, headers={"Authorization": ""}
    )
    assert_error(no_key, 401)
