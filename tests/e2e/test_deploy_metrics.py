"""Every metric that the dashboard and the alerts query is served by a live af3-serve (the
session server) or by a live vLLM router in front of it, the router started as the compose
file starts it (the deployment files themselves: tests/unit/test_deploy.py)."""

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.audio_files import audio_part
from tests.support.deploy_files import (
    alert_exprs,
    compose_router,
    dashboard_exprs,
    metric_names,
    tool,
)
from tests.support.server import API_KEY

# The router's metrics, served by its own exporter rather than by af3-serve.
ROUTER_METRIC_PREFIX = "vllm_router_"
# Series that Prometheus makes itself rather than scrapes.
PROMETHEUS_OWN = {"up"}


SERIES_SUFFIXES = {"histogram": ["_bucket", "_sum", "_count"], "summary": ["", "_sum", "_count"]}


def exposed_names(text: str) -> set[str]:
    """Series names in a /metrics page: the samples, and what each `# TYPE` declares (a
    labelled counter has no sample until its first increment, but its name is served)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.update(name + s for s in SERIES_SUFFIXES.get(kind, [""]))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


class FullReplica(BaseHTTPRequestHandler):
    """A stand-in replica that is healthy and answers every request 503 (af3-serve's answer
    when it is full): the router retries, records errors and opens its breaker."""

    def do_GET(self) -> None:
        self.answer(200, b'{"status": "ok"}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts += 1
        self.answer(503, b'{"error": {"message": "full", "code": "server_overloaded"}}')

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def full_replica() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FullReplica)
    server.posts = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_flags(command: list[str], **values: object) -> list[str]:
    """`command` with these `--flag=value` settings replaced (or added)."""
    flags = {f"--{name.replace('_', '-')}" for name in values}
    kept = [word for word in command if word.split("=", 1)[0] not in flags]
    return kept + [f"--{name.replace('_', '-')}={value}" for name, value in values.items()]


def without_workers(command: list[str]) -> list[str]:
    start = command.index("--worker-urls")
    end = start + 1
    while end < len(command) and not command[end].startswith("--"):
        end += 1
    return command[:start] + command[end:]


@pytest.fixture
def router(server, full_replica, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The compose file's router, on loopback, in front of the session's af3-serve and a
    full replica; its URL and its exporter's."""
    port, metrics_port = free_port(), free_port()
    service, _ = compose_router()
    command = with_flags(
        without_workers([str(word) for word in service["command"]]),
        host="127.0.0.1",
        port=port,
        prometheus_host="127.0.0.1",
        prometheus_port=metrics_port,
        # The replicas are already up: no need to wait 10 s for the first check.
        worker_startup_check_interval=1,
    )
    full = f"http://127.0.0.1:{full_replica.server_port}"
    router = tool("vllm-router", "the dev extra installs vllm-router")
    log = tmp_path / "vllm-router.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [router, *command, "--worker-urls", server.url, full], stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/readiness", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url, f"http://127.0.0.1:{metrics_port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_dashboard_and_alert_metrics_are_served(server, router, full_replica) -> None:
    """Against the tiny-checkpoint server, after answered requests with audio that went
    through the compose file's router (af3-serve's metrics), and after requests the router
    retried and refused (the router's metrics, from its own exporter)."""
    router_url, exporter_url = router
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    content = [audio_part(tone), {"type": "text", "text": "What is this sound?"}]
    body = {
        "model": "audio-flamingo-3",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 2,
    }

    def ask(session: str, key: str = API_KEY) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}", "X-Session-ID": session}
        return httpx.post(
            f"{router_url}/v1/chat/completions", headers=headers, json=body, timeout=120
        )

    # Each new session goes to the replica with fewer sessions: both get some.
    answered = None
    for i in range(8):
        reply = ask(f"deploy-test-{i}")
        if reply.status_code == 200:
            answered = answered or f"deploy-test-{i}"
        else:
            assert reply.status_code == 503, reply.text  # the full replica's, after a retry
        if answered and full_replica.posts:
            break
    assert answered and full_replica.posts >= 2  # an attempt and its retry
    # A wrong key: af3-serve's 401 comes back through the router, as a router error.
    assert ask(answered, key="wrong-key").status_code == 401

    served = exposed_names(httpx.get(f"{server.url}/metrics", timeout=30).text)
    served_by_router = exposed_names(httpx.get(f"{exporter_url}/metrics", timeout=30).text)
    used = {}
    for expr in dashboard_exprs() + alert_exprs():
        names = metric_names(expr)
        assert names, expr
        used.update(dict.fromkeys(names, expr))
    missing = {
        name: expr
        for name, expr in used.items()
        if name
        not in (served_by_router if name.startswith(ROUTER_METRIC_PREFIX) else served)
        | PROMETHEUS_OWN
    }
    assert not missing, f"not in af3-serve's or the router's /metrics: {missing}"
    # The histograms really are histograms (x_bucket served), not counters named alike.
    assert "af3_time_to_first_token_seconds_bucket" in used
    assert "vllm:e2e_request_latency_seconds_bucket" in used
    assert "vllm_router_generate_duration_seconds_bucket" in used
    # Per-replica load and prefix-cache reuse, and the router's view of the replicas.
    assert {"vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"} <= used.keys()
    assert {"vllm_router_worker_health", "vllm_router_processed_requests_total"} <= used.keys()
