"""Access settings on a server of their own: keys from a file, protected /metrics, request
ids, slow bodies cut off, and no key or audio in the logs."""

import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.audio_files import b64
from tests.server import start_server

KEYS = ["first-key-abc", "second-key-def"]


@pytest.fixture(scope="module")
def strict_server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("strict")
    key_file = folder / "keys.txt"
    key_file.write_text("# accepted keys\n" + "\n".join(KEYS) + "\n\n")
    process = start_server(
        tiny_checkpoint,
        folder / "af3-serve.log",
        "--api-key-file",
        str(key_file),
        "--protect-metrics",
        "--request-read-timeout-s",
        "2",
    )
    yield process
    process.stop()


def chat(server, key: str, speech, **headers: str) -> httpx.Response:
    body = {
        "model": "audio-flamingo-3",
        "max_tokens": 2,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_audio",
                        "input_audio": {"data": b64(speech[:16000]), "format": "wav"},
                    }
                ],
            }
        ],
    }
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json=body,
        timeout=60,
        headers={"Authorization": f"Bearer {key}", **headers},
    )


def test_every_key_from_the_file_works(strict_server, speech) -> None:
    for key in KEYS:
        assert chat(strict_server, key, speech).status_code == 200
    assert chat(strict_server, "# accepted keys", speech).status_code == 401


def test_metrics_and_version_need_a_key_when_protected(strict_server) -> None:
    for path in ("/metrics", "/version"):
        assert httpx.get(f"{strict_server.url}{path}").status_code == 401
        auth = {"Authorization": f"Bearer {KEYS[0]}"}
        assert httpx.get(f"{strict_server.url}{path}", headers=auth).status_code == 200
    assert httpx.get(f"{strict_server.url}/health").status_code == 200


def test_request_ids_are_kept_or_made(strict_server, speech) -> None:
    kept = chat(strict_server, KEYS[0], speech, **{"X-Request-Id": "trace-42"})
    assert kept.headers["x-request-id"] == "trace-42"
    made = chat(strict_server, KEYS[0], speech, **{"X-Request-Id": "bad id\twith junk"})
    assert made.headers["x-request-id"] not in ("", "bad id\twith junk")
    assert "id=trace-42" in strict_server.log_text()


def test_a_slow_body_is_cut_off(strict_server) -> None:
    host, port = strict_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + KEYS[0].encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"mo'
        )
        start = time.monotonic()
        reply = conn.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 408")
    assert time.monotonic() - start < 20
    assert httpx.get(f"{strict_server.url}/health").status_code == 200


def test_logs_hold_no_key_and_no_audio(strict_server, speech) -> None:
    chat(strict_server, KEYS[1], speech)
    log = strict_server.log_text()
    assert not any(key in log for key in KEYS)
    assert b64(speech[:16000])[:40] not in log
