"""Several 10-minute audios prefilled in the same engine steps, shown from vLLM's own stats.

Starts af3-serve (bench checkpoint, CPU) with room for four 15,000-token prompts in one
step (`--max-num-batched-tokens`) and four audios in its encoder cache, sends four
distinct 600-s clips of real speech at once, and reads `vllm:iteration_tokens_total`
(tokens per engine step) from /metrics.

    python -m benchmarks.prefill_concurrency --out benchmarks/results/prefill_concurrency.json
"""

import argparse
import asyncio
import base64
import os
import re
from pathlib import Path

import httpx

from benchmarks import harness
from benchmarks.harness import MODEL


def metric_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name)]


async def send_all(url: str, clips: list[str]) -> None:
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
    async with httpx.AsyncClient(timeout=600) as client:
        replies = await asyncio.gather(
            *(client.post(f"{url}/v1/chat/completions", json=b) for b in bodies)
        )
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--audios", type=int, default=4)
    args = parser.parse_args()

    checkpoint = harness.bench_checkpoint("bench")
    budget = args.audios * 15040  # prompt tokens of a 600-s clip with its chat template
    server = harness.launch_af3_serve(
        checkpoint,
        args.out.with_suffix(".log"),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "32768",
        "--max-num-batched-tokens",
        str(budget),
        "--encoder-cache-tokens",
        str(args.audios * 15000),
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "4"},
    )
    with server:
        server.wait_healthy()
        sample = harness.speech_sample()
        clips = [
            base64.b64encode(harness.wav_bytes(harness.speech_clip(600.0, seed, sample))).decode()
            for seed in range(args.audios)
        ]
        asyncio.run(send_all(server.url, clips))
        text = httpx.get(f"{server.url}/metrics").text

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
        "audios": args.audios,
        "max_num_batched_tokens": budget,
        "prompt_tokens_each": 15040,
        "engine_steps": steps,
        "prefill_steps": prefill_steps,
        "prefill_tokens": prefill_tokens,
        "largest_step_tokens_at_least": largest_step_at_least,
        "prompts_in_largest_step_at_least": -(-largest_step_at_least // 15040),
        "iteration_tokens_buckets": buckets,
    }
    harness.write_result(args.out, result)


if __name__ == "__main__":
    main()
