"""What an engine failure costs: af3-serve's engine process is killed, and the server's
/health turns 503, the process exits non-zero (after --engine-death-grace-s), and a fresh
start (what Docker's `restart: unless-stopped` or Kubernetes does) is healthy again.

Times, per round: kill -> /health 503, kill -> exit, start -> /health 200 (the checkpoint
already prepared in --cache-dir, as on a restart). CPU build, random-weight checkpoint:

    python -m benchmarks.engine_restart --preset tiny --rounds 3 \
        --out benchmarks/results/engine_restart_cpu.json
"""

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.harness import (
    ENGINE,
    bench_checkpoint,
    command_line,
    launch_af3_serve,
    machine,
    write_result,
)

POLL_S = 0.05


def engine_process(pid: int) -> psutil.Process:
    """vLLM's engine core, a child of the API process (its title says EngineCore)."""
    for child in psutil.Process(pid).children(recursive=True):
        if "EngineCore" in " ".join([child.name(), *child.cmdline()]):
            return child
    raise RuntimeError("no EngineCore process under the server")


def health(url: str) -> int | None:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code
    except httpx.HTTPError:
        return None


def one_round(checkpoint: Path, workdir: Path, i: int, env: dict[str, str]) -> dict[str, float]:
    args = ["--cache-dir", str(workdir / "cache"), *ENGINE]
    started = time.perf_counter()
    server = launch_af3_serve(checkpoint, workdir / f"af3-serve-{i}.log", *args, env=env)
    server.wait_healthy(timeout_s=600)
    start_s = time.perf_counter() - started
    engine = engine_process(server.process.pid)
    killed = time.perf_counter()
    engine.send_signal(signal.SIGKILL)
    unhealthy_s = None
    while server.process.poll() is None:
        if unhealthy_s is None and health(server.url) == 503:
            unhealthy_s = time.perf_counter() - killed
        time.sleep(POLL_S)
    exit_s = time.perf_counter() - killed
    assert server.process.returncode != 0, "the server must exit non-zero"
    return {
        "start_to_healthy_s": round(start_s, 2),
        "kill_to_503_s": None if unhealthy_s is None else round(unhealthy_s, 2),
        "kill_to_exit_s": round(exit_s, 2),
        "exit_code": server.process.returncode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="af3-tiny-checkpoint preset")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    checkpoint = bench_checkpoint(args.preset)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    with tempfile.TemporaryDirectory() as tmp:
        # Round 0 prepares the checkpoint in the cache; the restarts after it find it there.
        rounds = [one_round(checkpoint, Path(tmp), i, env) for i in range(args.rounds + 1)]
    restarts = rounds[1:]
    median = {
        key: statistics.median(r[key] for r in restarts if r[key] is not None)
        for key in ("start_to_healthy_s", "kill_to_503_s", "kill_to_exit_s")
    }
    write_result(
        args.out,
        {
            "command": command_line(),
            "machine": machine(),
            "checkpoint": f"random-weight {args.preset} preset",
            "engine_flags": list(ENGINE),
            "first_start": rounds[0],
            "restarts": restarts,
            "median_of_restarts": median,
        },
    )


if __name__ == "__main__":
    main()
