"""Replicas behind vLLM's router, on this machine's CPU: which routing keeps an AF3-Chat
conversation on the replica that has its audio cached, and what a replica's death costs.

Starts N af3-serve replicas of a random-weight checkpoint and, in turn, vLLM's router with
a load-only policy (power_of_two, as least-connections balancing) and with the policy our
deployment uses (sticky_least_loaded, conversations named by X-Session-ID, the router's
failover flags from deploy/docker-compose.yml). af3-bench sends conversations about
distinct recordings through each; the prefix-cache hits of later turns and their TTFT are
compared. Then, under the deployment's policy, one replica is killed mid-run: the requests
lost, whether any hung, and how long the router takes to use the replica again once it is
restarted.

    python -m benchmarks.scale_out --out-dir benchmarks/results/cpu_router_3replicas
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from benchmarks import harness

# The router's failover settings, as deployed (one home: the compose file's router command).
COMPOSE = harness.ROOT / "deploy" / "docker-compose.yml"
LOCAL_FLAGS = ("--host", "--port", "--worker-urls", "--policy", "--prometheus")
BASELINE_POLICY = "power_of_two"
# New conversations sent after the killed replica restarts, until one reaches it.
REJOIN_PROBE = {"--num-requests": 3, "--turns": 1, "--audio-seconds": 5, "--seed": 4}


def deployed_router_flags() -> list[str]:
    command = yaml.safe_load(COMPOSE.read_text())["services"]["router"]["command"]
    flags, skip = [], False
    for word in command:
        if word.startswith("--"):
            skip = word.startswith(LOCAL_FLAGS)
        if not skip:
            flags.append(word)
    return flags


def bench_args(router: harness.Server, replicas: list[harness.Server], args, **over) -> list:
    """af3-bench through the router; cache counters from every replica."""
    values = {
        "--num-requests": args.conversations,
        "--turns": args.turns,
        "--audio-seconds": args.audio_seconds,
        "--max-concurrency": args.max_concurrency,
        "--max-tokens": 16,
        "--seed": 0,
    } | over
    words = ["--url", router.url, "--ignore-eos", "--audio-kind", "speech", "--warmup", "0"]
    for replica in replicas:
        words += ["--metrics-url", f"{replica.url}/metrics"]
    for flag, value in values.items():
        words += [flag, str(value)]
    return words


def served(replica: harness.Server) -> float:
    """Requests the replica's engines have finished (vLLM's counter, all reasons)."""
    try:
        text = httpx.get(f"{replica.url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return float("nan")
    values = re.findall(r"^vllm:request_success_total\{.*\} (\S+)$", text, re.M)
    return sum(float(v) for v in values)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the server and its engine processes at once, as a crash or OOM kill would."""
    parent = psutil.Process(process.pid)
    for p in [*parent.children(recursive=True), parent]:
        p.send_signal(signal.SIGKILL)
    process.wait()


def compare_policies(
    replicas: list[harness.Server], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    results = {}
    for seed, policy in enumerate((BASELINE_POLICY, harness.ROUTER_POLICY), start=1):
        workers = [r.url for r in replicas]
        router = harness.launch_vllm_router(
            workers, out / f"router-{policy}.log", policy, *deployed_router_flags()
        )
        with router.wait_healthy(timeout_s=120):
            before = [served(r) for r in replicas]
            # A new seed: audio no replica has seen, so every first turn is a miss.
            summary = harness.run_af3_bench(
                *bench_args(router, replicas, args, **{"--seed": seed}),
                *("--out-dir", str(out / policy)),
            )
            after = [served(r) for r in replicas]
        run = summary["primary"]
        results[policy] = {
            "per_turn": run["per_turn"],
            "cache": run["cache"],
            "cache_by_replica": run.get("cache_by_replica"),
            "requests_per_replica": [a - b for a, b in zip(after, before, strict=True)],
        }
    return results


def replica_death(
    replicas: list[harness.Server], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """Kill one replica while a run is under way; restart it; time its way back in."""
    workers = [r.url for r in replicas]
    router = harness.launch_vllm_router(
        workers, out / "router-failover.log", harness.ROUTER_POLICY, *deployed_router_flags()
    )
    victim = replicas[-1]
    with router.wait_healthy(timeout_s=120):
        bench_out = out / "failover"
        command = [sys.executable, "-m", "af3_bench"]
        more = {"--seed": 3, "--num-requests": 2 * args.conversations}
        command += [*bench_args(router, replicas, args, **more), "--out-dir", str(bench_out)]
        with (out / "failover-bench.log").open("w") as log:
            bench = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            bench_started = time.monotonic()
            # Kill mid-run: once the victim has answered two of this run's requests and has
            # more in flight.
            baseline = served(victim)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and bench.poll() is None:
                if served(victim) >= baseline + 2 and _running(victim) >= 1:
                    break
                time.sleep(0.2)
            in_flight = _running(victim)
            killed_at = time.monotonic()
            kill_tree(victim.process)
            bench.wait()
        summary = json.loads((bench_out / "summary.json").read_text())
        records = json.loads((bench_out / "requests.json").read_text())

        # Restart the replica on its port and time the router's return to it.
        restarted = harness.launch(victim.command, out / "replica-restarted.log", _env())
        start = time.monotonic()
        restarted.wait_healthy(timeout_s=600)
        healthy_s = time.monotonic() - start
        back_s = _until_routed_to(router, restarted, replicas, args)
        replicas[-1] = restarted
    failed = [r for r in records if not r["ok"]]
    return {
        "killed_after_s": round(killed_at - bench_started, 1),
        "in_flight_on_killed_replica": in_flight,
        "requests": len(records),
        "failed": len(failed),
        "failed_statuses": sorted({str(r["status"]) for r in failed}),
        "unfinished_later_turns": summary["primary"]["unfinished"],
        "longest_request_s": max((r["e2el_s"] or 0) for r in records) if records else None,
        "request_timeout_s": 1200,
        "replica_start_to_healthy_s": round(healthy_s, 1),
        "healthy_to_first_routed_request_s": back_s,
    }


def _running(replica: harness.Server) -> float:
    text = httpx.get(f"{replica.url}/metrics", timeout=5).text
    values = re.findall(r"^vllm:num_requests_(?:running|waiting)\{.*\} (\S+)$", text, re.M)
    return sum(float(v) for v in values)


def _until_routed_to(
    router: harness.Server,
    replica: harness.Server,
    replicas: list[harness.Server],
    args: argparse.Namespace,
) -> float | None:
    """Seconds from the replica's health until the router sends it a new conversation:
    new single-turn conversations, one at a time, until its counter moves."""
    start = time.monotonic()
    before = served(replica)
    while time.monotonic() - start < 120:
        harness.run_af3_bench(
            *bench_args(router, replicas, args, **REJOIN_PROBE),
            *("--out-dir", str(Path(router.log).parent / "rejoin")),
        )
        if served(replica) > before:
            return round(time.monotonic() - start, 1)
    return None


def _env() -> dict[str, str]:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}


def plot(result: dict[str, Any], path: Path) -> None:
    """Later turns' TTFT and prefix-cache hits under each policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (ttft, hits) = plt.subplots(1, 2, figsize=(10, 4))
    policies = result["policies"]
    width = 0.8 / len(policies)
    for i, (policy, run) in enumerate(policies.items()):
        turns = [row["turn"] for row in run["per_turn"]]
        x = [t + (i - (len(policies) - 1) / 2) * width for t in turns]
        ttft.bar(x, [row["ttft_ms"]["mean"] / 1000 for row in run["per_turn"]], width, label=policy)
        rates = [100 * (row["prefix_hit_rate"] or 0) for row in run["per_turn"]]
        hits.bar(x, rates, width, label=policy)
    ttft.set(xlabel="turn", ylabel="mean TTFT (s)", xticks=turns)
    hits.set(xlabel="turn", ylabel="requests whose audio was cached (%)", xticks=turns)
    ttft.legend()
    w = result["workload"]
    figure.suptitle(
        f"{result['replicas']} af3-serve replicas behind vLLM's router ({result['checkpoint']} "
        f"checkpoint, CPU): {w['conversations']} conversations x {w['turns']} turns about "
        f"{w['audio_seconds']:.0f}-s audio, {w['max_concurrency']} at a time",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--preset", default="bench", help="random-weight checkpoint preset")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--audio-seconds", type=float, default=600)
    parser.add_argument("--max-concurrency", type=int, default=6)
    args = parser.parse_args()
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = harness.bench_checkpoint(args.preset)
    replicas = [
        harness.launch_af3_serve(
            checkpoint,
            out / f"replica-{i}.log",
            "--served-model-name",
            harness.MODEL,
            *harness.ENGINE,
            env=_env(),
        )
        for i in range(args.replicas)
    ]
    try:
        for replica in replicas:
            replica.wait_healthy()
        result = {
            "command": harness.command_line(),
            "machine": harness.machine(),
            "checkpoint": args.preset,
            "replicas": args.replicas,
            "workload": {
                "conversations": args.conversations,
                "turns": args.turns,
                "audio_seconds": args.audio_seconds,
                "max_concurrency": args.max_concurrency,
            },
            "router_flags": deployed_router_flags(),
            "policies": compare_policies(replicas, args, out),
            "replica_death": replica_death(replicas, args, out),
        }
    finally:
        for replica in replicas:
            replica.stop()
    harness.write_result(out / "summary.json", result)
    plot(result, out / "ttft_and_hits_by_turn.png")


if __name__ == "__main__":
    main()
