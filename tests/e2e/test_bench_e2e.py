"""af3-bench end to end, as a subprocess, against the real tiny-checkpoint af3-serve."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from af3_model_executor.constants import DEFAULT_SERVED_MODEL_NAME
from tests.support.server import API_KEY

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The installed console script, next to this interpreter: the packaging is tested too.
AF3_BENCH = Path(sys.executable).with_name("af3-bench")
SUMMARY_KEYS = {
    "command",
    "args",
    "machine",
    "workload",
    "endpoints",
    "primary",
    "compare",
    "comparison",
    "saturation",
    "steps",
}


def run_bench(out_dir: Path, *args: str) -> tuple[dict, str]:
    command = [
        str(AF3_BENCH),  # no --model: each endpoint's own, from its /v1/models
        "--api-key",
        API_KEY,
        "--out-dir",
        str(out_dir),
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    text = (out_dir / "summary.json").read_text()
    assert API_KEY not in text
    return json.loads(text), done.stdout


def bench(url: str, out_dir: Path, *extra: str) -> tuple[dict, str]:
    """Four short clips against `url` twice, as primary and as compare."""
    return run_bench(
        out_dir,
        "--url",
        url,
        "--compare",
        url,
        "--num-requests",
        "4",
        "--audio-mix",
        "3:10",
        "--max-tokens",
        "8",
        "--ignore-eos",
        *extra,
    )


def check_summary(s: dict, streamed: bool) -> None:
    assert (s["completed"], s["failed"], s["unfinished"], s["errors_by_status"]) == (4, 0, 0, {})
    assert s["total_completion_tokens"] == 32  # ignore_eos: exactly max_tokens each
    assert s["total_audio_tokens"] > 0 and s["total_prompt_tokens"] > s["total_audio_tokens"]
    for key in ("duration_s", "request_throughput", "rtfx", "output_tokens_per_s"):
        assert s[key] > 0
    assert s["rtfx"] == pytest.approx(s["total_audio_seconds"] / s["duration_s"])
    assert s["e2el_ms"]["p50"] > 0
    if streamed:
        assert 0 < s["ttft_ms"]["p50"] <= s["e2el_ms"]["p99"]
        assert s["tpot_ms"]["mean"] > 0 and s["itl_ms"]["p50"] > 0
        assert [b["bucket"] for b in s["ttft_by_audio_length"]] == ["0-30"]
        assert s["ttft_by_audio_length"][0]["count"] == 4
    else:
        assert s["ttft_ms"]["p50"] is None and s["ttft_by_audio_length"] == []


def check_pngs(out_dir: Path, names: list[str]) -> None:
    for name in names:
        path = out_dir / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_sweep_with_compare(server, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    summary, stdout = bench(server.url, out, "--sweep", "1,2", "--slo-ttft-ms", "600000")
    assert set(summary) == SUMMARY_KEYS
    assert "***" in summary["command"] and "--sweep 1,2" in summary["command"]
    assert summary["args"]["sweep"] == [1, 2] and summary["args"]["request_rate"] == "inf"
    assert {"platform", "cpu_count", "timestamp"} <= set(summary["machine"])
    assert summary["workload"]["num_requests"] == 4 and summary["workload"]["unique_audio"]
    # Without --model, each endpoint's own name (the tiny AF3 is served as the hub's AF3).
    assert {e["model"] for e in summary["endpoints"].values()} == {DEFAULT_SERVED_MODEL_NAME}
    assert summary["primary"] is None and summary["comparison"] is None  # a sweep: see steps
    assert set(summary["saturation"]) == {"primary", "compare"}
    assert all(c in (1, None) for c in summary["saturation"].values())

    steps = summary["steps"]
    assert [s["max_concurrency"] for s in steps] == [1, 2]
    assert [s["order"] for s in steps] == [["primary", "compare"], ["compare", "primary"]]
    for step in steps:
        for name in ("primary", "compare"):
            check_summary(step[name], streamed=True)
            assert step[name]["goodput"] == pytest.approx(step[name]["request_throughput"])
        ratios = step["comparison"]
        assert len(ratios) == 20 and all(v > 0 for v in ratios.values())
    assert "saturation point (primary)" in stdout and "ratio (>1: primary better)" in stdout

    records = json.loads((out / "requests.json").read_text())
    assert len(records) == 16  # 2 steps x 2 endpoints x 4 requests
    assert all(r["ok"] and r["status"] == 200 and r["completion_tokens"] == 8 for r in records)
    assert {(r["step"], r["endpoint"]) for r in records} == {
        (step, name) for step in (0, 1) for name in ("primary", "compare")
    }
    assert all(3 <= r["audio_seconds"] <= 10 and r["ttft_s"] > 0 for r in records)
    with (out / "requests.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and float(rows[0]["e2el_s"]) > 0
    check_pngs(out, ["ttft_cdf.png", "ttft_by_audio_length.png", "latency_vs_throughput.png"])


def test_one_step_compare_without_streaming(server, tmp_path: Path) -> None:
    out = tmp_path / "single"
    extra = ["--no-stream", "--max-concurrency", "2", "--request-rate", "20", "--burstiness", "2"]
    summary, _ = bench(server.url, out, *extra, "--audio-format", "flac", "--audio-kind", "tone")
    assert set(summary) == SUMMARY_KEYS
    assert summary["saturation"] is None and len(summary["steps"]) == 1
    for name in ("primary", "compare"):
        check_summary(summary[name], streamed=False)
        assert summary[name] == summary["steps"][0][name]
    assert summary["comparison"]["rtfx"] > 0 and summary["comparison"]["ttft_ms.p50"] is None
    check_pngs(out, ["ttft_cdf.png", "ttft_by_audio_length.png"])
    assert not (out / "latency_vs_throughput.png").exists()


def test_multi_turn_conversations_reuse_the_cached_audio(server, tmp_path: Path) -> None:
    """Turns 2 and 3 resend the first turn's audio and the history: the server's prefix
    cache must serve them, and its multimodal cache must find the audio again."""
    out = tmp_path / "turns"
    summary, stdout = run_bench(
        out,
        "--url",
        server.url,
        "--compare",
        server.url,
        "--turns",
        "3",
        "--num-requests",
        "2",
        "--audio-seconds",
        "20",
        "--max-tokens",
        "4",
        "--ignore-eos",
    )
    assert summary["workload"]["turns"] == 3 and len(summary["workload"]["questions"]) == 3
    for name in ("primary", "compare"):
        s = summary[name]
        assert (s["completed"], s["failed"], s["unfinished"]) == (6, 0, 0)
        assert s["total_audio_seconds"] == 40  # each conversation's audio counted once
        turns = s["per_turn"]
        assert [(t["turn"], t["count"], t["failed"]) for t in turns] == [
            (1, 2, 0),
            (2, 2, 0),
            (3, 2, 0),
        ]
        assert all(t["ttft_ms"]["p50"] > 0 and t["e2el_ms"]["p99"] > 0 for t in turns)
        prompts = [t["prompt_tokens_mean"] for t in turns]
        assert prompts[0] < prompts[1] < prompts[2]  # each turn resends the history
        prefix, mm = s["cache"]["prefix_cache"], s["cache"]["mm_cache"]
        # The 4 later turns each find at least their audio in the prefix cache (hits come
        # in whole KV blocks of the shared prefix: 512 tokens for 500 audio tokens here).
        audio_tokens_per_request = s["total_audio_tokens"] / 6
        assert prefix["hits"] >= 4 * audio_tokens_per_request, prefix
        assert mm["queries"] == 6 and mm["hits"] == 4, mm
    assert "turn  endpoint" in stdout and "prefix cache hits / queries (tokens)" in stdout

    records = json.loads((out / "requests.json").read_text())
    assert sorted((r["endpoint"], r["index"], r["turn"]) for r in records) == [
        (name, index, turn)
        for name in ("compare", "primary")
        for index in (0, 1)
        for turn in (1, 2, 3)
    ]
    assert all(r["ok"] and r["completion_tokens"] == 4 for r in records)
    assert all(isinstance(r["answer"], str) for r in records)
