"""Our server against vLLM's built-in AF3 server, same checkpoint, same engine settings.

Starts `af3-serve` and `vllm serve` (`python -m vllm.entrypoints.openai.api_server`, with
our plugin switched off through the VLLM_PLUGINS allowlist; the log line naming the model
class is kept as evidence) side by side, runs one `af3-bench --compare` workload against
both, interleaved, and measures the CPU seconds each API process spends per request. This
is the command behind every ratio we publish.

    python -m benchmarks.compare_servers --preset bench --out-dir DIR -- AF3_BENCH_ARGS
"""

import argparse
import os
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import ENGINE, MODEL


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

    checkpoint = harness.bench_checkpoint(args.preset)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": args.kv_cache_gib}

    ours = harness.launch_af3_serve(
        checkpoint, args.out_dir / "ours.log", "--served-model-name", MODEL, *ENGINE, env=env
    )
    with (
        ours,
        harness.launch_vllm_serve(
            checkpoint, args.out_dir / "upstream.log", *ENGINE, env=env
        ) as upstream,
    ):
        ours.wait_healthy()
        upstream.wait_healthy()
        cpu_before = {"ours": ours.cpu_seconds(), "upstream": upstream.cpu_seconds()}
        bench = ["--url", ours.url, "--model", MODEL, "--compare", upstream.url]
        summary = harness.run_af3_bench(*bench, "--out-dir", str(args.out_dir), *bench_args)
        cpu_after = {"ours": ours.cpu_seconds(), "upstream": upstream.cpu_seconds()}

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
        "engine_args": list(ENGINE),
        "ours_command": ours.command,
        "upstream_command": upstream.command,
        "ours_model_class": ours.model_class(),
        "upstream_model_class": upstream.model_class(),
        "api_cpu": cpu,
        "compare_command": harness.command_line(),
        # The CPU build's core layout (e.g. VLLM_CPU_NUM_OF_RESERVED_CPU), same for both.
        "vllm_cpu_env": {k: v for k, v in env.items() if k.startswith("VLLM_CPU")},
    }
    harness.write_result(args.out_dir / "summary.json", summary, shown=cpu)


if __name__ == "__main__":
    main()
