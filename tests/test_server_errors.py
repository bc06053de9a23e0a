"""Every error class leaves as an OpenAI-shaped error with the right status and param."""

import base64

import httpx
import numpy as np
import pytest

from tests.audio_files import audio_part, b64
from tests.conftest import make_clip
from tests.server import API_KEY

MODEL = "audio-flamingo-3"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def post(server, body: dict | bytes, headers: dict | None = None) -> httpx.Response:
    headers = {**AUTH, **(headers or {})}
    if isinstance(body, bytes):
        headers["content-type"] = "application/json"
        return httpx.post(
            f"{server.url}/v1/chat/completions", content=body, headers=headers, timeout=120
        )
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def request(content: list | str, **extra) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 2,
        **extra,
    }


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"] and 'File "' not in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.fixture(scope="module")
def second(speech) -> np.ndarray:
    return speech[:16000]


def test_missing_and_wrong_api_key(server, second) -> None:
    body = request([audio_part(second)])
    assert_error(httpx.post(f"{server.url}/v1/chat/completions", json=body), 401)
    assert_error(post(server, body, {"Authorization": "Bearer nope"}), 401)
    assert_error(httpx.get(f"{server.url}/v1/models"), 401)


def test_unknown_model(server, second) -> None:
    body = request([audio_part(second)])
    body["model"] = "gpt-4o"
    assert_error(post(server, body), 404, "model")


def test_unknown_parameter(server, second) -> None:
    error = assert_error(post(server, request([audio_part(second)], tools=[])), 400, "tools")
    assert "tools" in error["message"]


def test_invalid_parameter_value(server, second) -> None:
    assert_error(post(server, request([audio_part(second)], temperature=5)), 400, "temperature")


def test_invalid_json(server) -> None:
    assert_error(post(server, b"{not json"), 400)


def test_invalid_base64(server) -> None:
    part = {"type": "input_audio", "input_audio": {"data": "###", "format": "wav"}}
    assert_error(post(server, request([part])), 400, "messages[0].content[0].input_audio.data")


def test_undecodable_audio(server) -> None:
    junk = base64.b64encode(b"RIFF" + bytes(range(256)) * 40).decode()
    part = {"type": "input_audio", "input_audio": {"data": junk, "format": "wav"}}
    error = assert_error(
        post(server, request([{"type": "text", "text": "hi"}, part])),
        400,
        "messages[0].content[1].input_audio.data",
    )
    assert error["code"] == "invalid_audio"


def test_audio_longer_than_the_limit(server, speech) -> None:
    response = post(server, request([audio_part(make_clip(speech, 601.0))]))
    error = assert_error(response, 413, "messages[0].content[0].input_audio.data")
    assert "600" in error["message"]


def test_audio_shorter_than_one_token(server, speech) -> None:
    error = assert_error(post(server, request([audio_part(speech[:200])])), 400, "messages")
    assert "minimum" in error["message"]


def test_too_many_audios(server, second) -> None:
    assert_error(post(server, request([audio_part(second)] * 9)), 400, "messages")


def test_body_too_large(server) -> None:
    padding = "A" * (48 * 2**20 + 1)
    part = {"type": "input_audio", "input_audio": {"data": padding, "format": "wav"}}
    assert_error(post(server, request([part])), 413)


def test_max_tokens_beyond_the_context(server, second) -> None:
    assert_error(post(server, request([audio_part(second)], max_tokens=40000)), 400, "max_tokens")


def test_file_url_outside_the_allowed_folder(server, tmp_path, second) -> None:
    outside = tmp_path / "secret.wav"
    outside.write_bytes(base64.b64decode(b64(second)))
    part = {"type": "audio_url", "audio_url": {"url": outside.as_uri()}}
    assert_error(post(server, request([part])), 400, "messages[0].content[0].audio_url.url")


def test_http_url_not_allowlisted(server) -> None:
    part = {"type": "audio_url", "audio_url": {"url": "http://example.com/a.wav"}}
    error = assert_error(post(server, request([part])), 400)
    assert error["code"] == "domain_not_allowed"


def test_server_still_serves_after_errors(server, second) -> None:
    response = post(server, request([audio_part(second)]))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] is not None
