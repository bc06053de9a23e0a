"""Our server against vLLM's built-in AF3 server, same checkpoint, same engine settings.

Starts `af3-serve` and `python -m vllm.entrypoints.openai.api_server` (with our plugin
switched off through the VLLM_PLUGINS allowlist; the log line naming the model class is
kept as evidence) side by side, runs one `af3-bench --compare` workload against both,
interleaved, and measures the CPU seconds each API process spends per request. This is
the command behind every ratio we publish.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from af3_model_executor.tiny_checkpoint import build_checkpoint

MODEL = "audio-flamingo-3"
# One engine setting for both servers: the 10-min audio prompt prefills in one step.
ENGINE = [
    "--max-model-len",
    "32768",
    "--max-num-batched-tokens",
    "16384",
    "--dtype",
    "float32",
    "--enforce-eager",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback_server(module: str, checkpoint: Path, port: int, *extra: str) -> list[str]:
    """A server module on loopback, from this Python (so from this virtual environment)."""
    host = ["--host", "127.0.0.1", "--port", str(port)]
    return [sys.executable, "-m", module, "--model", str(checkpoint), *host, *extra]


def af3_serve_command(checkpoint: Path, port: int, *extra: str) -> list[str]:
    return _loopback_server("af3_serve.cli", checkpoint, port, *extra)


def upstream_command(checkpoint: Path, port: int) -> list[str]:
    """vLLM's own OpenAI server (`vllm serve`), with our engine settings."""
    module = "vllm.entrypoints.openai.api_server"
    return _loopback_server(module, checkpoint, port, "--served-model-name", MODEL, *ENGINE)


def wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited during start; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    sys.exit(f"server did not become healthy; see {log}")


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def api_cpu_seconds(process: subprocess.Popen) -> float:
    """CPU time of the API server process itself, not of its engine children."""
    times = psutil.Process(process.pid).cpu_times()
    return times.user + times.system


def model_class_line(log: Path) -> str:
    text = log.read_text(errors="replace")
    match = re.search(r"[^\n]*(Resolved architecture|model class)[^\n]*", text)
    return match.group(0).strip() if match else "(not found in log)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--kv-cache-gib", default="4", help="VLLM_CPU_KVCACHE_SPACE per server")
    parser.add_argument(
        "bench_args",
        nargs=argparse.REMAINDER,
        help="after --: arguments for af3-bench (workload and load shape)",
    )
    args = parser.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]

    checkpoint = Path(".cache/bench-checkpoints") / args.preset
    if not (checkpoint / "model.safetensors").exists():
        build_checkpoint(checkpoint, args.preset)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": args.kv_cache_gib}

    ours_port, upstream_port = free_port(), free_port()
    ours_log, upstream_log = args.out_dir / "ours.log", args.out_dir / "upstream.log"
    ours = start(
        af3_serve_command(checkpoint, ours_port, "--served-model-name", MODEL, *ENGINE),
        env,
        ours_log,
    )
    upstream = start(
        upstream_command(checkpoint, upstream_port),
        {**env, "VLLM_PLUGINS": "none-of-ours"},  # an allowlist naming no plugin
        upstream_log,
    )
    try:
        ours_url = f"http://127.0.0.1:{ours_port}"
        upstream_url = f"http://127.0.0.1:{upstream_port}"
        wait_healthy(ours_url, ours, ours_log)
        wait_healthy(upstream_url, upstream, upstream_log)
        cpu_before = {"ours": api_cpu_seconds(ours), "upstream": api_cpu_seconds(upstream)}
        command = [
            sys.executable,
            "-m",
            "benchmarks.cli",
            "--url",
            ours_url,
            "--model",
            MODEL,
            "--compare",
            upstream_url,
            "--out-dir",
            str(args.out_dir),
            *bench_args,
        ]
        subprocess.run(command, check=True)
        cpu_after = {"ours": api_cpu_seconds(ours), "upstream": api_cpu_seconds(upstream)}
    finally:
        for process in (ours, upstream):
            process.terminate()
        for process in (ours, upstream):
            process.wait(timeout=120)

    summary_path = args.out_dir / "summary.json"
    summary = json.loads(summary_path.read_text())
    completed = {
        name: sum(step[key]["completed"] for step in summary["steps"])
        for name, key in (("ours", "primary"), ("upstream", "compare"))
    }
    cpu = {
        name: {
            "api_process_cpu_s": round(cpu_after[name] - cpu_before[name], 3),
            "api_process_cpu_s_per_request": round(
                (cpu_after[name] - cpu_before[name]) / max(completed[name], 1), 4
            ),
        }
        for name in ("ours", "upstream")
    }
    cpu["ratio_upstream_over_ours"] = round(
        cpu["upstream"]["api_process_cpu_s_per_request"]
        / max(cpu["ours"]["api_process_cpu_s_per_request"], 1e-9),
        2,
    )
    summary["servers"] = {
        "checkpoint_preset": args.preset,
        "engine_args": ENGINE,
        "ours_command": ours.args,
        "upstream_command": upstream.args,
        "ours_model_class": model_class_line(ours_log),
        "upstream_model_class": model_class_line(upstream_log),
        "api_cpu": cpu,
        "compare_command": " ".join(sys.argv),
        # The CPU build's core layout (e.g. VLLM_CPU_NUM_OF_RESERVED_CPU), same for both.
        "vllm_cpu_env": {k: v for k, v in env.items() if k.startswith("VLLM_CPU")},
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["servers"]["api_cpu"], indent=2))


if __name__ == "__main__":
    main()
