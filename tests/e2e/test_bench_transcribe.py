"""af3-bench --transcribe end to end against the session's real af3-serve: each request is a
file sent to /v1/audio/transcriptions, streamed, its TTFT the first transcript delta."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import API_KEY

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]


def run_bench(out_dir: Path, *args: str) -> dict:
    # This checkout's af3_bench (benchmarks/af3_bench), as the installed script would run it.
    path = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-c", "from af3_bench.cli import main; main()"]
    command += ["--api-key", API_KEY, "--out-dir", str(out_dir), *args]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": path}
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out_dir / "summary.json").read_text())


@pytest.mark.parametrize("stream", [True, False])
def test_transcription_workload(server, tmp_path: Path, stream: bool) -> None:
    summary = run_bench(
        tmp_path,
        "--url",
        server.url,
        "--transcribe",
        "--num-requests",
        "2",
        "--audio-seconds",
        "95",
        "--audio-kind",
        "speech",
        "--max-concurrency",
        "2",
        *([] if stream else ["--no-stream"]),
    )
    assert summary["workload"]["endpoint"] == "/v1/audio/transcriptions"
    primary = summary["primary"]
    assert (primary["completed"], primary["failed"]) == (2, 0)
    assert primary["total_audio_seconds"] == 190
    # At least four windows of audio a request (95 s of speech, at most 30 s a window).
    assert primary["total_audio_tokens"] >= 2 * 25 * 80
    assert primary["total_completion_tokens"] > 0
    assert (primary["ttft_ms"]["mean"] is not None) == stream


def test_transcribe_takes_no_turns() -> None:
    path = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-c", "from af3_bench.cli import main; main()"]
    command += ["--url", "http://127.0.0.1:9", "--transcribe", "--turns", "2"]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": path}
    )
    assert done.returncode == 2 and "--transcribe" in done.stderr
