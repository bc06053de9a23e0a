"""Several of the longest audios prefilled in the same engine steps, shown from vLLM's own stats.

Starts af3-serve (bench checkpoint of `--family`, CPU), sends four distinct clips of real
speech as long as the checkpoint allows (AF3 600 s, MusicFlamingo 1200 s, AF-Next 1800 s)
at once, polls `vllm:num_requests_running` while they run (its peak is reported) and reads
`vllm:iteration_tokens_total` (tokens per engine step) from /metrics. AF3 is served with
room for four 15,000-token prompts in one step (`--max-num-batched-tokens`) and four
audios in its encoder cache; the other families with no engine flags at all, so with the
defaults af3-serve derives from the checkpoint (one longest prompt a step).

    python -m benchmarks.prefill_concurrency --out benchmarks/results/prefill_concurrency.json
    python -m benchmarks.prefill_concurrency --family af-next \
        --out benchmarks/results/prefill_concurrency_cpu_af-next.json
"""

import argparse
import asyncio
import base64
import os
import re
import time
from pathlib import Path

import httpx

from benchmarks import harness
from benchmarks.harness import MODEL, metric_total


def metric_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name)]


async def poll_running(client: httpx.AsyncClient, url: str, seen: list[dict], done: asyncio.Event):
    """Samples of running and waiting requests every 0.2 s until `done`."""
    start = time.monotonic()
    while not done.is_set():
        text = (await client.get(f"{url}/metrics")).text
        seen.append(
            {
                "t_s": round(time.monotonic() - start, 2),
                "running": metric_total(text, "vllm:num_requests_running"),
                "waiting": metric_total(text, "vllm:num_requests_waiting"),
            }
        )
        try:
            await asyncio.wait_for(done.wait(), 0.2)
        except TimeoutError:
            pass


async def send_all(url: str, clips: list[str]) -> tuple[list[dict], list[dict]]:
    """Each reply's usage and seconds, and the running/waiting samples taken meanwhile."""
    bodies = [
        {
            "model": MODEL,
            "max_tokens": 4,
            "ignore_eos": True,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}}
                    ],
                }
            ],
        }
        for clip in clips
    ]
    seen: list[dict] = []
    done = asyncio.Event()
    start = time.monotonic()

    async def post(client: httpx.AsyncClient, body: dict) -> tuple[httpx.Response, float]:
        reply = await client.post(f"{url}/v1/chat/completions", json=body)
        return reply, time.monotonic() - start

    async with httpx.AsyncClient(timeout=1800) as client:
        poller = asyncio.create_task(poll_running(client, url, seen, done))
        replies = await asyncio.gather(*(post(client, b) for b in bodies))
        done.set()
        await poller
    assert all(r.status_code == 200 for r, _ in replies), [r.text for r, _ in replies]
    usage = [{**r.json()["usage"], "seconds": round(s, 2)} for r, s in replies]
    return usage, seen


def load() -> str:
    return Path("/proc/loadavg").read_text().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--audios", type=int, default=4)
    parser.add_argument("--family", choices=["af3", "musicflamingo", "af-next"], default="af3")
    args = parser.parse_args()

    checkpoint = harness.bench_checkpoint("bench", family=args.family)
    spec = harness.model_executor("audio_spec").AudioSpec.from_pretrained(str(checkpoint))
    seconds = float(spec.max_audio_seconds)  # the checkpoint's limit
    if args.family == "af3":
        # Prompt tokens of the longest clips with their chat template, all in one step.
        budget = args.audios * (spec.max_prompt_tokens + harness.TEMPLATE_TOKENS)
        engine = (*harness.engine_size_flags(spec)[:2], "--max-num-batched-tokens", str(budget))
        engine += ("--encoder-cache-tokens", str(args.audios * spec.max_audio_tokens))
    else:
        budget, engine = None, ()  # af3-serve's defaults for the checkpoint's longest audio
    server = harness.launch_af3_serve(
        checkpoint,
        args.out.with_suffix(".log"),
        "--served-model-name",
        MODEL,
        "--dtype",
        "float32",
        "--enforce-eager",
        *engine,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "4"},
    )
    with server:
        server.wait_healthy()
        sample = harness.speech_sample()
        clips = [
            base64.b64encode(harness.wav_bytes(harness.speech_clip(seconds, seed, sample))).decode()
            for seed in range(args.audios)
        ]
        load_before = load()
        started = time.monotonic()
        usage, seen = asyncio.run(send_all(server.url, clips))
        wall = time.monotonic() - started
        load_after = load()
        text = httpx.get(f"{server.url}/metrics").text
    if budget is None:  # the engine's own, as its log prints it
        found = re.search(r"max_num_batched_tokens=(\d+)", server.log_text())
        budget = int(found.group(1)) if found else None
    prompt_tokens = usage[0]["prompt_tokens"]

    buckets = {}
    for line in metric_lines(text, "vllm:iteration_tokens_total_bucket"):
        le = re.search(r'le="([^"]+)"', line).group(1)
        buckets[le] = float(line.split()[-1])
    total = sum(float(x.split()[-1]) for x in metric_lines(text, "vllm:iteration_tokens_total_sum"))
    steps = buckets["+Inf"]
    prefill_steps = steps - buckets["8.0"]  # decode steps of 4 requests carry <= 8 tokens
    decode_tokens = args.audios * 3  # 4 generated tokens each; the first comes from prefill
    prefill_tokens = total - decode_tokens
    # The largest step holds what the other prefill steps (<= 16384 each, by bucket) left.
    largest_step_at_least = prefill_tokens - 16384 * (prefill_steps - 1)
    result = {
        "command": harness.command_line(),
        "server_command": server.command,
        "family": args.family,
        "checkpoint": str(checkpoint),
        "machine": harness.machine(),
        "load_average_before_after": [load_before, load_after],
        "audios": args.audios,
        "audio_seconds_each": seconds,
        "max_num_batched_tokens": budget,
        "prompt_tokens_each": prompt_tokens,
        "wall_s": round(wall, 2),
        "peak_num_requests_running": max(s["running"] for s in seen),
        "peak_num_requests_waiting": max(s["waiting"] for s in seen),
        "requests": usage,
        "engine_steps": steps,
        "prefill_steps": prefill_steps,
        "prefill_tokens": prefill_tokens,
        "iteration_tokens_buckets": buckets,
        "running_waiting_samples": seen,
    }
    if args.family == "af3":
        result["largest_step_tokens_at_least"] = largest_step_at_least
        prompt = spec.max_prompt_tokens + harness.TEMPLATE_TOKENS
        result["prompts_in_largest_step_at_least"] = -(-largest_step_at_least // prompt)
    harness.write_result(args.out, result)


if __name__ == "__main__":
    main()
