"""Access settings, in-process: keys from a file, /metrics and /version behind a key when
protected, request ids kept or made, slow bodies cut off with 408, and no key or audio in
the logs."""

import asyncio
import logging
import re

from tests.support.audio_files import b64
from tests.support.http_helpers import (
    CHAT,
    NO_KEY,
    assert_error,
    audio_request,
    metric,
    metrics_page,
    serve,
    server_fixture,
)

KEYS = ["first-key-abc", "second-key-def"]
api = server_fixture()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def test_every_key_from_the_file_works(tiny_checkpoint, tmp_path, speech) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# accepted keys\n" + "\n".join(KEYS) + "\n\n  \n")
    body = audio_request(speech[:16000])
    async with serve(tiny_checkpoint, tmp_path, "--api-key-file", str(key_file)) as app:
        for key in KEYS:
            response = await app.client.post(CHAT, json=body, headers=bearer(key))
            assert response.status_code == 200, response.text
        for key in ("# accepted keys", "", KEYS[0] + "x", KEYS[0][:-1]):
            response = await app.client.post(CHAT, json=body, headers=bearer(key))
            assert_error(response, 401, code="invalid_api_key")
        basic = await app.client.post(
            CHAT, json=body, headers={"Authorization": f"Basic {KEYS[0]}"}
        )
        assert_error(basic, 401, code="invalid_api_key")
    assert len(app.engine.started) == 2


async def test_metrics_and_version_need_a_key_when_protected(tiny_checkpoint, tmp_path) -> None:
    async with serve(tiny_checkpoint, tmp_path, "--protect-metrics") as app:
        for path in ("/metrics", "/version"):
            assert_error(await app.client.get(path, headers=NO_KEY), 401)
            wrong = await app.client.get(path, headers=bearer("nope"))
            assert_error(wrong, 401, code="invalid_api_key")
            assert (await app.client.get(path)).status_code == 200
        assert (await app.client.get("/health", headers=NO_KEY)).status_code == 200


async def test_metrics_and_version_are_open_by_default(api) -> None:
    for path in ("/metrics", "/version", "/health"):
        assert (await api.client.get(path, headers=NO_KEY)).status_code == 200
    assert_error(await api.client.get("/v1/models", headers=NO_KEY), 401)


async def test_request_ids_are_kept_or_made(api, speech, caplog) -> None:
    body = audio_request(speech[:16000])
    with caplog.at_level(logging.INFO, logger="af3_serve.access"):
        kept = await api.client.post(CHAT, json=body, headers={"X-Request-Id": "trace-42"})
        made = await api.client.post(CHAT, json=body, headers={"X-Request-Id": "bad id\twith junk"})
        refused = await api.client.post(
            CHAT, json=body, headers={**NO_KEY, "X-Request-Id": "trace-43"}
        )
        fresh = await api.client.get("/health")
    assert kept.status_code == 200 and kept.headers["x-request-id"] == "trace-42"
    assert made.headers["x-request-id"] not in ("", "bad id\twith junk")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "trace-43"
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
    lines = [r.getMessage() for r in caplog.records if r.name == "af3_serve.access"]
    assert any(line.startswith("POST /v1/chat/completions 200 ") for line in lines)
    assert any(line.endswith(" id=trace-42") for line in lines)
    assert any(line.endswith(f" id={made.headers['x-request-id']}") for line in lines)
    assert any("401" in line and line.endswith(" id=trace-43") for line in lines)


async def test_a_slow_body_is_cut_off(tiny_checkpoint, tmp_path) -> None:
    """The body's second piece comes 30 s after its first; with a 0.5-s read deadline the
    server answers 408 having read only the first (no clock needed: what was sent says it)."""
    sent: list[bytes] = []

    async def slow_body():
        for piece in (b'{"mo', b'del": "audio-flamingo-3"}'):
            sent.append(piece)
            yield piece
            await asyncio.sleep(30)

    async with serve(tiny_checkpoint, tmp_path, "--request-read-timeout-s", "0.5") as app:
        before = await metrics_page(app.client)
        response = await app.client.post(
            CHAT, content=slow_body(), headers={"content-type": "application/json"}
        )
        after = await metrics_page(app.client)
        health = await app.client.get("/health")
    error = assert_error(response, 408, code="request_timeout")
    assert error["type"] == "request_timeout" and "0.5 s" in error["message"]
    assert sent == [b'{"mo']  # cut off while the client still had the rest to send
    assert health.status_code == 200
    timeouts = 'af3_requests_rejected_total{reason="body_read_timeout"}'
    assert metric(after, timeouts) == metric(before, timeouts) + 1
    assert app.engine.started == []


async def test_logs_hold_no_key_and_no_audio(tiny_checkpoint, tmp_path, speech, caplog) -> None:
    """Everything this process logs, at every level, while keys and audio come and go
    (accepted, refused, and audio the server could not decode)."""
    key_file = tmp_path / "keys.txt"
    key_file.write_text("\n".join(KEYS) + "\n")
    body = audio_request(speech[:16000])
    junk_data = b64(speech[:100])[:40] + "A" * 400
    junk = {"type": "input_audio", "input_audio": {"data": junk_data, "format": "wav"}}
    with caplog.at_level(logging.DEBUG):
        async with serve(tiny_checkpoint, tmp_path, "--api-key-file", str(key_file)) as app:
            ok = await app.client.post(CHAT, json=body, headers=bearer(KEYS[1]))
            await app.client.post(CHAT, json=body, headers=bearer(KEYS[0][:-1] + "Z"))
            bad = body | {"messages": [{"role": "user", "content": [junk]}]}
            undecodable = await app.client.post(CHAT, json=bad, headers=bearer(KEYS[1]))
    assert ok.status_code == 200
    assert_error(undecodable, 400, code="invalid_audio")
    log = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /v1/chat/completions" in log  # the access log was captured
    assert not any(key in log or key[:-1] in log for key in KEYS)
    assert b64(speech[:16000])[:40] not in log
    assert b64(speech[:100])[:40] not in log
