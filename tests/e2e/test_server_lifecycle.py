"""Through a real engine and process: disconnects abort engine work, SIGTERM drains, and a
dead engine turns /health to 503 and ends the process non-zero. Admission (503/429 with
Retry-After) is in tests/http/test_http_admission.py, in-process."""

import asyncio
import signal
import socket
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.audio_files import audio_part, make_clip
from tests.support.server import API_KEY, start_server, wait_for

MODEL = "audio-flamingo-3"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def long_request(clip, stream: bool, max_tokens: int = 3000) -> dict:
    return {
        "model": MODEL,
        "stream": stream,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": [audio_part(clip)]}],
    }


def metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    values = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    ]
    return sum(values)


FINISHED = 'vllm:request_success_total{engine="0",finished_reason="'


def finished(server) -> float:
    """Requests the engine completed (stop or length); aborted ones are not counted."""
    return metric(server, FINISHED + 'stop"') + metric(server, FINISHED + 'length"')


async def test_disconnect_mid_stream_aborts_the_engine_request(server, speech) -> None:
    finished_before = finished(server)
    disconnects = 'af3_client_disconnects_total{endpoint="chat_stream"}'
    disconnects_before = metric(server, disconnects)
    async with httpx.AsyncClient(timeout=120) as client:
        async with client.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            headers=AUTH,
            json=long_request(make_clip(speech, 60.0), True),
        ) as response:
            lines = response.aiter_lines()
            for _ in range(3):
                await anext(lines)
    assert wait_for(lambda: metric(server, disconnects) == disconnects_before + 1)
    assert wait_for(lambda: metric(server, "vllm:num_requests_running") == 0)
    assert finished(server) == finished_before  # aborted, not run to its end


async def test_disconnect_before_the_answer_aborts_the_engine_request(server, speech) -> None:
    finished_before = finished(server)
    async with httpx.AsyncClient(timeout=120) as client:
        task = asyncio.create_task(
            client.post(
                f"{server.url}/v1/chat/completions",
                headers=AUTH,
                json=long_request(make_clip(speech, 60.0), False),
            )
        )
        assert await asyncio.to_thread(
            wait_for, lambda: metric(server, "vllm:num_requests_running") >= 1, 60
        )
        task.cancel()
    assert wait_for(lambda: metric(server, 'af3_client_disconnects_total{endpoint="chat"}') >= 1)
    assert wait_for(lambda: metric(server, "vllm:num_requests_running") == 0)
    assert metric(server, "af3_requests_in_flight") == 0
    assert finished(server) == finished_before


@pytest.fixture()
def own_server(tiny_checkpoint: Path, tmp_path: Path):
    process = start_server(tiny_checkpoint, tmp_path / "af3-serve.log")
    yield process
    process.stop()


def test_sigterm_drains_in_flight_requests(own_server, speech) -> None:
    body = long_request(make_clip(speech, 30.0), False) | {"max_tokens": 200}
    with httpx.Client(timeout=120) as client:
        result: dict = {}
        thread = threading.Thread(
            target=lambda: result.setdefault(
                "response",
                client.post(f"{own_server.url}/v1/chat/completions", headers=AUTH, json=body),
            )
        )
        thread.start()
        assert wait_for(lambda: metric(own_server, "af3_requests_in_flight") >= 1, 60)
        own_server.process.send_signal(signal.SIGTERM)
        thread.join(120)
    assert result["response"].status_code == 200
    # uvicorn re-raises the signal after its graceful shutdown: killed by SIGTERM, cleanly.
    assert own_server.process.wait(timeout=120) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in own_server.log_text()


def test_engine_death_turns_health_503_and_exits_non_zero(own_server, speech) -> None:
    children = psutil.Process(own_server.process.pid).children(recursive=True)
    engines = [p for p in children if "EngineCore" in " ".join(p.cmdline()) + p.name()]
    assert engines, [(p.name(), p.cmdline()) for p in children]
    with httpx.Client(timeout=120) as client:
        body = long_request(make_clip(speech, 20.0), True, 30000)
        with client.stream(
            "POST", f"{own_server.url}/v1/chat/completions", headers=AUTH, json=body
        ) as in_flight:
            lines = in_flight.iter_lines()
            next(lines)  # admitted and generating
            for engine in engines:
                engine.kill()
            tail = [line for line in lines if line]
    # The in-flight request ends with an OpenAI-shaped 503 error event, then [DONE].
    assert tail[-1] == "data: [DONE]"
    assert '"code":"engine_dead"' in tail[-2].replace(" ", "")
    assert wait_for(lambda: httpx.get(f"{own_server.url}/health").status_code == 503, 30)
    refused = httpx.post(f"{own_server.url}/v1/chat/completions", headers=AUTH, json=body)
    assert refused.status_code == 503
    assert own_server.process.wait(timeout=120) != 0
    assert "engine died" in own_server.log_text()


def test_disconnect_during_upload_is_counted_and_harmless(server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    before = metric(server, 'af3_client_disconnects_total{endpoint="upload"}')
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
            + b'{"model": "audio-flamingo-3", "messages": ['
            + b" " * 100_000
        )
    assert wait_for(
        lambda: metric(server, 'af3_client_disconnects_total{endpoint="upload"}') > before, 30
    )
    assert httpx.get(f"{server.url}/health").status_code == 200
