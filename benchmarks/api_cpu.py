"""CPU seconds the HTTP/API process spends per request: af3-serve against `vllm serve`.

`compare_servers` runs both servers at once and interleaves their passes, so each API
process is also charged for the time the other server's pass runs. Here the servers run
one after the other, alone on the machine, with the same checkpoint, engine settings and
af3-bench workload (given with --audio-seconds and --audio-kind, which the warm-up
overrides); each API process's CPU time (psutil, the process itself, not its engine
children) is read around its own pass. The idle rate, measured over a quiet window first,
is reported too, so per-request numbers can be read with and without it.

    python -m benchmarks.api_cpu --preset bench --out benchmarks/results/api_cpu.json \\
        -- --num-requests 16 --audio-seconds 600 --max-concurrency 4 --max-tokens 16
"""

import argparse
import datetime
import os
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import ENGINE, MODEL, Server

IDLE_WINDOW_S = 10.0
WARMUP_AUDIO = ["--audio-kind", "noise", "--audio-seconds", "29"]


def measure(server: Server, bench_args: list[str], out_dir: Path) -> dict:
    """One server's API process, idle and under the af3-bench pass; the server stopped."""
    with server:
        server.wait_healthy()
        name = server.log.stem
        bench = ["--url", server.url, "--model", MODEL, *bench_args]
        # The first requests pay for lazy imports and caches: not what a request costs.
        # Other audio than the pass's (whose clips it would otherwise put in the caches).
        warm = [*bench, "--num-requests", "2", *WARMUP_AUDIO]
        harness.run_af3_bench(*warm, "--out-dir", str(out_dir / f"{name}-warmup"))
        idle_start = server.cpu_seconds()
        time.sleep(IDLE_WINDOW_S)
        idle_rate = (server.cpu_seconds() - idle_start) / IDLE_WINDOW_S
        before, started = server.cpu_seconds(), time.perf_counter()
        summary = harness.run_af3_bench(*bench, "--out-dir", str(out_dir / name))
        cpu, wall = server.cpu_seconds() - before, time.perf_counter() - started
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    parser.add_argument("--kv-cache-gib", default="4", help="VLLM_CPU_KVCACHE_SPACE per server")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: af3-bench args")
    args = parser.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]

    checkpoint = harness.bench_checkpoint(args.preset)
    work = args.out.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": args.kv_cache_gib}
    ours = ["--served-model-name", MODEL, "--cache-dir", str(work), *ENGINE]
    results = {
        "ours": measure(
            harness.launch_af3_serve(checkpoint, work / "ours.log", *ours, env=env),
            bench_args,
            work,
        ),
        "upstream": measure(
            harness.launch_vllm_serve(checkpoint, work / "upstream.log", *ENGINE, env=env),
            bench_args,
            work,
        ),
    }
    for key in ("api_cpu_s_per_request", "api_cpu_s_per_request_without_idle"):
        results[f"ratio_upstream_over_ours_{key.removeprefix('api_cpu_s_')}"] = round(
            results["upstream"][key] / max(results["ours"][key], 1e-9), 2
        )
    results.update(
        command=harness.command_line(),
        preset=args.preset,
        engine_args=list(ENGINE),
        machine=harness.machine(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    harness.write_result(args.out, results)


if __name__ == "__main__":
    main()
