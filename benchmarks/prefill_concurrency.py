"""Several 10-minute audios prefilled in the same engine steps, shown from vLLM's own stats.

Starts af3-serve (bench checkpoint, CPU) with room for four 15,000-token prompts in one
step (`--max-num-batched-tokens`) and four audios in its encoder cache, sends four
distinct 600-s clips at once, and reads `vllm:iteration_tokens_total` (tokens per engine
step) and the peak of `vllm:num_requests_running` from /metrics.

    python -m benchmarks.prefill_concurrency --out benchmarks/results/prefill_concurrency.json
"""

import argparse
import asyncio
import base64
import json
import os
import re
import sys
from pathlib import Path

import httpx

from af3_model_executor.tiny_checkpoint import build_checkpoint
from benchmarks.compare_servers import af3_serve_command, free_port, start, wait_healthy
from benchmarks.workload import AudioSource, encode

MODEL = "audio-flamingo-3"


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

    checkpoint = Path(".cache/bench-checkpoints/bench")
    if not (checkpoint / "model.safetensors").exists():
        build_checkpoint(checkpoint, "bench")
    budget = args.audios * 15040  # prompt tokens of a 600-s clip with its chat template
    port = free_port()
    log = args.out.with_suffix(".log")
    command = af3_serve_command(
        checkpoint,
        port,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "32768",
        "--max-num-batched-tokens",
        str(budget),
        "--encoder-cache-tokens",
        str(args.audios * 15000),
    )
    server = start(command, {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "4"}, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server, log)
        clips = [
            base64.b64encode(
                encode(AudioSource("tone", None, seed).audio(600.0, 0), "wav")
            ).decode()
            for seed in range(args.audios)
        ]
        asyncio.run(send_all(url, clips))
        text = httpx.get(f"{url}/metrics").text
    finally:
        server.terminate()
        server.wait(timeout=120)

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
        "command": " ".join(sys.argv),
        "server_command": command,
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
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
