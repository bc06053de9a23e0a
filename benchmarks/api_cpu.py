"""CPU seconds the HTTP/API process spends per request: af3-serve against `vllm serve`.

`compare_servers` runs both servers at once and interleaves their passes, so each API
process is also charged for the time the other server's pass runs. Here the servers run
one after the other, alone on the machine, with the same checkpoint, engine settings and
af3-bench workload (given with --audio-seconds and --audio-kind, which the warm-up
overrides); each API process's CPU time (psutil, the process itself, not its engine
children) is read around its own pass. The idle rate, measured over a quiet window first,
is reported too, so per-request numbers can be read with and without it.

    python -m benchmarks.api_cpu --preset bench --out benchmarks/results/api_cpu.json \
        -- --num-requests 16 --audio-seconds 600 --max-concurrency 4 --max-tokens 16
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from af3_model_executor.tiny_checkpoint import build_checkpoint
from benchmarks.compare_servers import (
    ENGINE,
    MODEL,
    af3_serve_command,
    api_cpu_seconds,
    free_port,
    start,
    upstream_command,
    wait_healthy,
)

IDLE_WINDOW_S = 10.0
WARMUP_AUDIO = ["--audio-kind", "noise", "--audio-seconds", "29"]


def measure(
    name: str, command: list[str], env: dict[str, str], bench_args: list[str], out_dir: Path
) -> dict:
    """Start one server, measure its API process idle and under the af3-bench pass."""
    url = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    log = out_dir / f"{name}.log"
    process = start(command, env, log)
    try:
        wait_healthy(url, process, log)
        # The first requests pay for lazy imports and caches: not what a request costs.
        # Other audio than the pass's (whose clips it would otherwise put in the caches).
        warm = [*bench_args, "--num-requests", "2", *WARMUP_AUDIO]
        warm += ["--out-dir", str(out_dir / f"{name}-warmup")]
        run_bench(url, warm)
        idle_start = api_cpu_seconds(process)
        time.sleep(IDLE_WINDOW_S)
        idle_rate = (api_cpu_seconds(process) - idle_start) / IDLE_WINDOW_S
        before, started = api_cpu_seconds(process), time.perf_counter()
        summary = run_bench(url, [*bench_args, "--out-dir", str(out_dir / name)])
        cpu, wall = api_cpu_seconds(process) - before, time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=120)
    completed = sum(step["primary"]["completed"] for step in summary["steps"])
    busy = max(cpu - idle_rate * wall, 0.0)
    return {
        "completed": completed,
        "wall_s": round(wall, 2),
        "api_cpu_s": round(cpu, 3),
        "idle_cpu_s_per_s": round(idle_rate, 4),
        "api_cpu_s_per_request": round(cpu / max(completed, 1), 4),
        "api_cpu_s_per_request_without_idle": round(busy / max(completed, 1), 4),
        "requests_per_s": summary["steps"][0]["primary"].get("request_throughput"),
    }


def run_bench(url: str, args: list[str]) -> dict:
    command = [sys.executable, "-m", "benchmarks.cli", "--url", url, "--model", MODEL, *args]
    subprocess.run(command, check=True)
    out_dir = Path(args[args.index("--out-dir") + 1])
    return json.loads((out_dir / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    parser.add_argument("--kv-cache-gib", default="4", help="VLLM_CPU_KVCACHE_SPACE per server")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: af3-bench args")
    args = parser.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]

    checkpoint = Path(".cache/bench-checkpoints") / args.preset
    if not (checkpoint / "model.safetensors").exists():
        build_checkpoint(checkpoint, args.preset)
    work = args.out.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": args.kv_cache_gib}
    ours_command = af3_serve_command(
        checkpoint, free_port(), "--served-model-name", MODEL, "--cache-dir", str(work), *ENGINE
    )
    results = {
        "ours": measure("ours", ours_command, env, bench_args, work),
        "upstream": measure(
            "upstream",
            upstream_command(checkpoint, free_port()),
            {**env, "VLLM_PLUGINS": "none-of-ours"},  # an allowlist naming no plugin
            bench_args,
            work,
        ),
    }
    for key in ("api_cpu_s_per_request", "api_cpu_s_per_request_without_idle"):
        results[f"ratio_upstream_over_ours_{key.removeprefix('api_cpu_s_')}"] = round(
            results["upstream"][key] / max(results["ours"][key], 1e-9), 2
        )
    results.update(
        command=" ".join([sys.executable, "-m", "benchmarks.api_cpu", *sys.argv[1:]]),
        preset=args.preset,
        engine_args=ENGINE,
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
