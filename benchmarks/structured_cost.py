"""What a JSON schema costs: requests/s and TTFT of chat requests about 30-s clips at a fixed
concurrency, without and with a `response_format` json_schema, in one run per server, for
af3-serve and `vllm serve` (vLLM's built-in AF3) on the same checkpoint and engine
settings (xgrammar, compact JSON). Every request carries a clip of its own (no prefix-cache
hits), the same clips for both servers. Both servers are up at once and the phases
alternate between them, so a change in the machine's load falls on both.

    python -m benchmarks.structured_cost --preset bench --concurrency 16 --requests 96 \
        --rounds 2 --out benchmarks/results/structured_cost_cpu.json
"""

import argparse
import asyncio
import base64
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from benchmarks import harness
from benchmarks.harness import ENGINE, MODEL

STRUCTURED = (
    "--structured-outputs-config",
    '{"backend": "xgrammar", "disable_any_whitespace": true}',
)
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["speech", "music", "noise"]},
        "loud": {"type": "boolean"},
    },
    "required": ["label", "loud"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "tag", "schema": SCHEMA, "strict": True},
}


async def one(client: openai.AsyncOpenAI, audio: str, constrained: bool, max_tokens: int):
    """One streamed request: (TTFT to the first content, completion tokens, its text)."""
    extra = {"response_format": RESPONSE_FORMAT} if constrained else {}
    start = time.perf_counter()
    ttft, text, usage = None, "", None
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                    {"type": "text", "text": "Tag this recording."},
                ],
            }
        ],
        max_tokens=max_tokens,
        temperature=1.0,
        stream=True,
        stream_options={"include_usage": True},
        **extra,
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = ttft if ttft is not None else time.perf_counter() - start
            text += chunk.choices[0].delta.content
    return ttft, usage.completion_tokens, text


async def phase(
    url: str, audios: list[str], constrained: bool, max_tokens: int, concurrency: int
) -> list[tuple[float | None, int, str]]:
    """`audios` as requests, `concurrency` at a time; each one's TTFT, tokens and text, and
    the phase's wall time as the last item's first field."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def gated(audio: str):
        async with gate:
            return await one(client, audio, constrained, max_tokens)

    start = time.perf_counter()
    results = await asyncio.gather(*(gated(audio) for audio in audios))
    wall = time.perf_counter() - start
    await client.close()
    return [*results, (wall, 0, "")]


def summary(runs: list[list[tuple[float | None, int, str]]], constrained: bool) -> dict:
    """Requests/s and TTFT over the rounds of one mode."""
    results = [r for run in runs for r in run[:-1]]
    wall = sum(run[-1][0] for run in runs)
    ttfts = sorted(r[0] for r in results if r[0] is not None)
    out = {
        "requests": len(results),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 3),
        "ttft_median_s": round(statistics.median(ttfts), 3),
        "ttft_p90_s": round(ttfts[int(0.9 * (len(ttfts) - 1))], 3),
        "completion_tokens_mean": round(statistics.mean(r[1] for r in results), 1),
    }
    if constrained:
        valid = sum(_valid(r[2]) for r in results)
        out["answers_valid_against_schema"] = f"{valid}/{len(results)}"
    return out


def _valid(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and set(value) == {"label", "loud"}


def clips(first: int, count: int, seconds: float) -> list[str]:
    """`count` distinct clips (seeds `first`...), base64 WAV: made per phase, not all held."""
    return [
        base64.b64encode(harness.wav_bytes(harness.speech_clip(seconds, seed=i))).decode()
        for i in range(first, first + count)
    ]


def measure(servers: dict[str, harness.Server], args) -> dict[str, Any]:
    """Both servers up; a warm-up each, then rounds of phases interleaved server by server
    (constrained on each, then plain on each), so a change in the machine's load falls on
    both. The plain requests generate as many tokens as the constrained answers took (their
    mean), so the modes differ in the constraint, not in the answer's length."""
    n, c = args.requests, args.concurrency
    for server in servers.values():
        server.wait_healthy()
        asyncio.run(phase(server.url, clips(0, c, args.seconds), True, args.max_tokens, c))
    runs = {name: {True: [], False: []} for name in servers}
    for i in range(args.rounds):
        first = c + 2 * i * n
        constrained, plain = clips(first, n, args.seconds), clips(first + n, n, args.seconds)
        tokens = {}
        for name, server in servers.items():
            run = asyncio.run(phase(server.url, constrained, True, args.max_tokens, c))
            tokens[name] = round(statistics.mean(r[1] for r in run[:-1]))
            runs[name][True].append(run)
        for name, server in servers.items():
            run = asyncio.run(phase(server.url, plain, False, tokens[name], c))
            runs[name][False].append(run)
    result = {}
    for name, server in servers.items():
        plain, constrained = summary(runs[name][False], False), summary(runs[name][True], True)
        result[name] = {
            "model_class": server.model_class(),
            "plain": plain,
            "json_schema": constrained,
            "json_schema_over_plain": {
                "requests_per_s": round(constrained["requests_per_s"] / plain["requests_per_s"], 3),
                "ttft_median": round(constrained["ttft_median_s"] / plain["ttft_median_s"], 3),
            },
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench", help="af3-tiny-checkpoint preset")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96, help="per phase")
    parser.add_argument("--rounds", type=int, default=2, help="constrained, then plain")
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length")
    parser.add_argument("--max-tokens", type=int, default=64, help="for the constrained answers")
    parser.add_argument("--kv-cache-gib", default="2", help="VLLM_CPU_KVCACHE_SPACE per server")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    checkpoint = harness.bench_checkpoint(args.preset)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": args.kv_cache_gib}
    flags = (*ENGINE, *STRUCTURED)
    result: dict[str, Any] = {
        "command": harness.command_line(),
        "machine": harness.machine(),
        "build": "CPU build (vllm-cpu 0.32.0)",
        "checkpoint": f"random-weight {args.preset} preset",
        "load_average_at_start": os.getloadavg(),
        "workload": {
            "clip_s": args.seconds,
            "concurrency": args.concurrency,
            "requests_per_phase": args.requests,
            "rounds": args.rounds,
            "max_tokens_constrained": args.max_tokens,
            "engine_flags": list(flags),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        cache = ("--cache-dir", str(Path(tmp) / "cache"))
        ours = harness.launch_af3_serve(
            checkpoint,
            Path(tmp) / "ours.log",
            "--served-model-name",
            MODEL,
            *cache,
            *flags,
            env=env,
        )
        with (
            ours,
            harness.launch_vllm_serve(checkpoint, Path(tmp) / "vllm.log", *flags, env=env) as up,
        ):
            result |= measure({"af3_serve": ours, "vllm_serve": up}, args)
    result["load_average_at_end"] = os.getloadavg()
    result["af3_serve_over_vllm_serve"] = {
        mode: round(
            result["af3_serve"][mode]["requests_per_s"]
            / result["vllm_serve"][mode]["requests_per_s"],
            3,
        )
        for mode in ("plain", "json_schema")
    }
    harness.write_result(args.out, result)


if __name__ == "__main__":
    main()
