"""The soak's pure parts (benchmarks/soak.py): what counts as a clean refusal and what as a
failure, the RSS slope per thousand requests, the processes told apart by their titles,
and the KV cache's size read from /metrics."""

import json

import pytest

from benchmarks.harness import metric_total
from benchmarks.soak import (
    Failed,
    Refused,
    error_event,
    http_error,
    kv_capacity_tokens,
    process_role,
    rss_report,
    server_log_errors,
    slope_per_thousand,
)


def body(status_type: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": "no", "type": status_type, "code": code}}).encode()


@pytest.mark.parametrize(
    ("status", "payload", "outcome", "detail"),
    [
        (429, body("rate_limit_error", "too_many_pending"), Refused, "429 too_many_pending"),
        (503, body("service_unavailable", "engine_dead"), Refused, "503 engine_dead"),
        (400, body("invalid_request_error"), Refused, "400 invalid_request_error"),
        (413, body("request_too_large", "body_too_large"), Refused, "413 body_too_large"),
        (500, body("server_error"), Failed, "HTTP 500 server_error"),
        (502, body("server_error"), Failed, "HTTP 502"),
        (429, b"Too Many Requests", Failed, "without an OpenAI error body"),
        (503, b'{"detail": "busy"}', Failed, "without an OpenAI error body"),
    ],
)
def test_http_answers_refused_only_as_openai_errors_with_4xx_or_503(
    status: int, payload: bytes, outcome: type, detail: str
) -> None:
    result = http_error(status, payload)
    assert isinstance(result, outcome)
    assert detail in str(result)


def test_error_events_refuse_by_type_and_fail_otherwise() -> None:
    assert isinstance(error_event({"type": "rate_limit_error", "code": "x"}), Refused)
    assert isinstance(error_event({"type": "invalid_request_error"}), Refused)
    assert isinstance(error_event({"type": "server_error", "message": "boom"}), Failed)
    assert isinstance(error_event({"type": "something_new"}), Failed)
    assert isinstance(error_event(None), Failed)


def test_slope_is_kib_per_thousand_requests() -> None:
    requests = [0, 100, 200, 300, 400]
    assert slope_per_thousand(requests, [1000 + 0.115 * r for r in requests]) == pytest.approx(
        115.0
    )
    noisy = [1000 + (5 if i % 2 else -5) for i in range(5)]
    assert slope_per_thousand(requests, noisy) == pytest.approx(0.0, abs=40)
    assert slope_per_thousand([7, 7, 7], [1, 2, 3]) is None
    assert slope_per_thousand([], []) is None


def test_rss_report_is_over_the_measured_period_only() -> None:
    def at(t: float, phase: str, requests: int, api_kib: float) -> dict:
        return {"t_s": t, "phase": phase, "requests": requests, "rss_kib": {"api": api_kib}}

    samples = [
        at(0, "warmup", 0, 100_000),  # first-touch growth, not counted
        at(10, "warmup", 50, 500_000),
        at(20, "soak", 100, 500_000),
        at(30, "soak", 1100, 500_000 + 2_000),
        at(40, "drain", 1100, 400_000),
    ]
    api = rss_report(samples)["api"]
    assert api["slope_kib_per_1000_requests"] == pytest.approx(2000.0)
    assert api["slope_kib_per_hour"] == pytest.approx(2000 * 3600 / 10)
    assert (api["first_mib"], api["last_mib"], api["samples"]) == (488.3, 490.2, 2)


def test_processes_by_title() -> None:
    assert process_role("VLLM::EngineCore") == "engine_core"
    assert process_role("VLLM::Worker") == "model_worker"
    assert process_role("python -m af3_serve.inputs.vad --workers 2") == "vad_worker"
    assert process_role("python -c from multiprocessing.resource_tracker import main") == "other"


METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
af3_requests_in_flight 4.0
af3_requests_in_flight_max 9.0
vllm:cache_config_info{block_size="128",engine="0",num_gpu_blocks="512"} 1.0
"""


def test_metrics_summed_over_engines_and_the_kv_cache_size() -> None:
    assert metric_total(METRICS, "vllm:num_requests_running") == 5.0
    assert metric_total(METRICS, "af3_requests_in_flight") == 4.0
    assert metric_total(METRICS, "vllm:kv_cache_usage_perc") == 0.0
    assert kv_capacity_tokens(METRICS) == 65536
    with pytest.raises(RuntimeError):
        kv_capacity_tokens("")


def test_server_log_errors_keep_what_names_the_cause() -> None:
    log = "\n".join(
        [
            "2026-12-06 18:07:20,100 INFO af3_serve.access POST /v1/chat/completions 200",
            "2026-12-06 18:07:20,273 ERROR asyncio Task exception was never retrieved",
            "future: <Task finished name='Task-9' coro=<f() done> exception=ValueError('x')>",
            "Traceback (most recent call last):",
            '  File "a.py", line 1, in f',
            "ValueError: x",
            "(APIServer pid=7) INFO 12-06 18:07:21 [loggers.py:1] Engine 000: running",
            "INFO:     127.0.0.1:5 - GET /health 200",
        ]
    )
    errors = server_log_errors(log)
    assert errors["error_lines"] == 1
    assert errors["first"][0].endswith("Task exception was never retrieved")
    assert errors["first"][1].startswith("future: <Task") and errors["first"][-1] == "ValueError: x"
