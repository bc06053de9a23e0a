"""The HTTP edge in-process, on the fake engine: no vLLM engine boots here."""

import pytest

from tests.audio_files import audio_part
from tests.conftest import make_clip

MODEL = "audio-flamingo-3"


def chat_body(speech, seconds: float = 2.0, **extra) -> dict:
    content = [audio_part(make_clip(speech, seconds)), {"type": "text", "text": "What is said?"}]
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def test_models_lists_base_and_think(http) -> None:
    response = await http.client.get("/v1/models")
    assert [m["id"] for m in response.json()["data"]] == [MODEL, MODEL + "-think"]


async def test_a_missing_key_is_refused(http, speech) -> None:
    response = await http.client.post(
        "/v1/chat/completions", json=chat_body(speech), headers={"Authorization": ""}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert http.engine.started == []


@pytest.mark.parametrize("stream", [False, True])
async def test_answer_usage_and_audio_tokens(http, speech, stream: bool) -> None:
    body = chat_body(speech, 3.0, max_tokens=5, stream=stream)
    if stream:
        body["stream_options"] = {"include_usage": True}
    response = await http.client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    (request_id,) = http.engine.finished
    prompt = http.engine.prompts[request_id]
    audio_token = http.engine.model_config.hf_config.audio_token_id
    assert prompt.count(audio_token) == 75  # 3 s of audio: 75 tokens after pooling
    if stream:
        events = response.text.split("\n\n")
        assert events[-2:] == ["data: [DONE]", ""]
        assert all(e.startswith("data: ") for e in events[:-1])
    else:
        usage = response.json()["usage"]
        assert usage["prompt_tokens"] == len(prompt)
        assert usage["prompt_tokens_details"]["audio_tokens"] == 75
        assert usage["completion_tokens"] == 5
