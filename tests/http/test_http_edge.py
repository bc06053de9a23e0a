"""The HTTP edge in-process, on the fake engine: no vLLM engine boots here."""

import pytest
import vllm

from tests.support.http_helpers import (
    CHAT,
    MODEL,
    THINK_MODEL,
    chat_body,
    metric,
    metrics_page,
    server_fixture,
)

api = server_fixture()


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


async def test_models_version_and_health(api, tiny_checkpoint) -> None:
    models = (await api.client.get("/v1/models")).json()
    assert models["object"] == "list"
    base, think = models["data"]
    assert {k: base[k] for k in ("id", "object", "owned_by", "max_model_len")} == {
        "id": MODEL,
        "object": "model",
        "owned_by": "af3-serve",
        "max_model_len": 32768,
    }
    assert (think["id"], think["root"], think["parent"]) == (THINK_MODEL, MODEL, MODEL)
    assert base["created"] == think["created"] > 0
    assert (await api.client.get("/health")).json() == {"status": "ok"}
    version = (await api.client.get("/version")).json()
    assert version["model_class"] == "AF3ServeForConditionalGeneration"
    assert version["vllm"] == vllm.__version__
    assert (version["model"], version["served_model_name"]) == (str(tiny_checkpoint), MODEL)


async def test_metrics_count_requests_and_audio(api, speech) -> None:
    names = (
        "af3_audio_seconds_received_total",
        "af3_audio_decode_seconds_bucket",
        "af3_request_audio_duration_seconds_bucket",
        "af3_time_to_first_token_seconds",
        "af3_requests_in_flight",
    )
    before = await metrics_page(api.client)
    assert all(name in before for name in names)
    response = await api.client.post(CHAT, json=chat_body(speech, 3.0, max_tokens=2))
    refused = await api.client.post(CHAT, json=chat_body(speech, 3.0, model="gpt-4o"))
    after = await metrics_page(api.client)
    assert response.status_code == 200 and refused.status_code == 404

    def grew(series: str) -> float:
        return metric(after, series) - metric(before, series, default=0.0)

    assert grew("af3_audio_seconds_received_total") == pytest.approx(3.0)
    assert grew("af3_audio_decode_seconds_count") == 1
    assert grew("af3_request_audio_duration_seconds_count") == 1
    assert grew("af3_request_audio_duration_seconds_sum") == pytest.approx(3.0)
    assert grew("af3_time_to_first_token_seconds_count") == 1
    requests = 'af3_requests_total{endpoint="/v1/chat/completions",status="%s"}'
    assert grew(requests % "200") == 1 and grew(requests % "404") == 1
    assert grew("af3_requests_in_flight") == 0
