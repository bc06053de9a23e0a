"""Every error class leaves as an OpenAI-shaped error with the right status, param and code,
before any engine work: in-process on the fake engine."""

import base64
import logging

import httpx
import numpy as np
import pytest

from tests.support.audio_files import audio_part, b64, encode, make_clip
from tests.support.http_helpers import (
    CHAT,
    MODEL,
    NO_KEY,
    THINK_MODEL,
    assert_error,
    request,
    server_fixture,
    url_request,
)

MAX_BODY = 48 * 2**20
api = server_fixture(
    "--max-request-bytes", str(MAX_BODY), "--allowed-local-media-path", "{tmp}/media"
)


@pytest.fixture(scope="module")
def second(speech) -> np.ndarray:
    return speech[:16000]


async def post(api, body: dict | bytes, **kwargs) -> httpx.Response:
    if isinstance(body, bytes):
        headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
        return await api.client.post(CHAT, content=body, headers=headers, **kwargs)
    return await api.client.post(CHAT, json=body, **kwargs)


async def test_missing_and_wrong_api_key(api, second) -> None:
    body = request([audio_part(second)])
    assert_error(await post(api, body, headers=NO_KEY), 401, code="invalid_api_key")
    wrong = await post(api, body, headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401, code="invalid_api_key")
    assert_error(await api.client.get("/v1/models", headers=NO_KEY), 401)
    assert api.engine.started == []


async def test_unknown_model(api, second) -> None:
    body = request([audio_part(second)], model="gpt-4o")
    assert_error(await post(api, body), 404, "model", "model_not_found")


async def test_unknown_parameter(api, second) -> None:
    response = await post(api, request([audio_part(second)], web_search_options={}))
    error = assert_error(response, 400, "web_search_options", "unsupported_parameter")
    assert "web_search_options" in error["message"]


async def test_invalid_parameter_value(api, second) -> None:
    response = await post(api, request([audio_part(second)], temperature=5))
    assert_error(response, 400, "temperature", "invalid_value")


async def test_invalid_json(api) -> None:
    assert_error(await post(api, b"{not json"), 400, code="invalid_json")


async def test_invalid_base64(api) -> None:
    part = {"type": "input_audio", "input_audio": {"data": "###", "format": "wav"}}
    response = await post(api, request([part]))
    assert_error(response, 400, "messages[0].content[0].input_audio.data", "invalid_base64")


async def test_undecodable_audio(api) -> None:
    junk = base64.b64encode(b"RIFF" + bytes(range(256)) * 40).decode()
    part = {"type": "input_audio", "input_audio": {"data": junk, "format": "wav"}}
    assert_error(
        await post(api, request([{"type": "text", "text": "hi"}, part])),
        400,
        "messages[0].content[1].input_audio.data",
        "invalid_audio",
    )


async def test_audio_longer_than_the_limit(api, speech) -> None:
    response = await post(api, request([audio_part(make_clip(speech, 601.0))]))
    error = assert_error(response, 413, "messages[0].content[0].input_audio.data", "audio_too_long")
    assert "600" in error["message"]


async def test_audio_shorter_than_one_token(api, speech) -> None:
    response = await post(api, request([audio_part(speech[:200])]))
    error = assert_error(
        response, 400, "messages[0].content[0].input_audio.data", "audio_too_short"
    )
    assert "minimum is 321 samples" in error["message"]


async def test_too_many_audios(api, second) -> None:
    response = await post(api, request([audio_part(second)] * 9))
    assert_error(response, 400, "messages", "too_many_audios")


async def test_body_too_large(api) -> None:
    """Refused on its declared length, and when it streams without one."""
    padding = "A" * (MAX_BODY + 1)
    part = {"type": "input_audio", "input_audio": {"data": padding, "format": "wav"}}
    assert_error(await post(api, request([part])), 413, code="request_too_large")

    async def chunks():
        for _ in range(49):
            yield b" " * 2**20

    response = await api.client.post(
        CHAT, content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, code="request_too_large")
    assert api.engine.started == []


async def test_a_body_refused_mid_stream_is_no_unhandled_error(api, caplog) -> None:
    async def chunks():
        for _ in range(49):
            yield b" " * 2**20

    with caplog.at_level(logging.ERROR):
        response = await api.client.post(
            CHAT, content=chunks(), headers={"content-type": "application/json"}
        )
    assert_error(response, 413, code="request_too_large")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_max_tokens_beyond_the_context(api, second) -> None:
    response = await post(api, request([audio_part(second)], max_tokens=40000))
    assert_error(response, 400, "max_tokens", "context_length_exceeded")


async def test_option_pairs_that_need_each_other(api, second) -> None:
    body = request([audio_part(second)], stream_options={"include_usage": True})
    assert_error(await post(api, body), 400, "stream_options")
    body = request([audio_part(second)], top_logprobs=2)
    assert_error(await post(api, body), 400, "top_logprobs")


async def test_thinking_field_against_the_model(api, second) -> None:
    body = request([audio_part(second)], model=THINK_MODEL, thinking=False)
    assert_error(await post(api, body), 400, "thinking")


async def test_lone_surrogate_in_the_text(api) -> None:
    body = '{"model": "' + MODEL + '", "messages": [{"role": "user", "content": "\\ud800"}]}'
    error = assert_error(await post(api, body.encode()), 400)
    # Refused by the JSON parser, or else when the prompt is rendered.
    assert error["code"] in {"invalid_json", "invalid_text"}
    assert api.engine.started == []


async def test_unknown_path_and_method(api) -> None:
    assert_error(await api.client.get("/v1/nothing"), 404)
    assert_error(await api.client.get(CHAT), 405)


async def test_file_url_outside_the_allowed_folder(api, tmp_path, second) -> None:
    outside = tmp_path / "secret.wav"
    outside.write_bytes(base64.b64decode(b64(second)))
    response = await post(api, url_request(outside.as_uri()))
    assert_error(response, 400, "messages[0].content[0].audio_url.url", "local_file_not_allowed")


async def test_file_and_data_urls_inside_the_rules(api, tmp_path, speech) -> None:
    clip = speech[: 16000 * 4]
    local = tmp_path / "media" / "clip.flac"
    local.write_bytes(encode(clip, "flac"))
    for url in (local.as_uri(), f"data:audio/wav;base64,{b64(clip)}"):
        response = await post(api, url_request(url))
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["prompt_tokens_details"]["audio_tokens"] == 100


async def test_http_url_not_allowlisted(api) -> None:
    response = await post(api, url_request("http://example.com/a.wav"))
    assert_error(response, 400, "messages[0].content[0].audio_url.url", "domain_not_allowed")
