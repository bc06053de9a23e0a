"""`af3-bench`: load-test an OpenAI-compatible audio chat endpoint.

Reports what an audio user needs next to the usual LLM serving metrics: audio seconds
processed per wall second (RTFx) and time to first token by audio length. See
benchmarks/README.md.
"""

import argparse
import asyncio
import datetime
import math
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from af3_bench import report
from af3_bench.load_shapes import arrival_offsets
from af3_bench.runner import Endpoint, run_pass, warm_up
from af3_bench.stats import ratios, saturation_point, summarize
from af3_bench.workload import FORMATS, KINDS, AudioSource, Workload, draw_lengths, questions
from af3_serve.tools.common import served_model

SECRET_FLAGS = ("--api-key", "--compare-api-key")


def _positive_ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",")]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,2,4,8: {text!r}")
    return values


def _mix(text: str) -> tuple[float, float]:
    low, high = (float(v) for v in text.split(":"))
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX with 0 < MIN <= MAX: {text!r}")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="af3-bench",
        description="Load-test an OpenAI-compatible audio chat endpoint.",
        allow_abbrev=False,  # a prefix of --api-key must not slip past the redaction
    )
    target = p.add_argument_group("target")
    target.add_argument(
        "--url", required=True, help="http://host:port (POSTs /v1/chat/completions)"
    )
    target.add_argument("--model", help="default: the server's (the first of its /v1/models)")
    target.add_argument("--api-key", help="sent as a Bearer token")
    target.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        help="a replica's /metrics, where the engine's cache counters are read (repeatable, "
        "for --url behind a load balancer; default: URL/metrics)",
    )
    target.add_argument("--compare", metavar="URL2", help="a second endpoint, run in turn")
    target.add_argument("--compare-model", help="default: URL2's (the first of its /v1/models)")
    target.add_argument("--compare-api-key", help="default: --api-key")

    work = p.add_argument_group("workload")
    work.add_argument(
        "--num-requests", type=int, default=100, help="requests per pass (default %(default)s)"
    )
    lengths = work.add_mutually_exclusive_group()
    lengths.add_argument("--audio-seconds", type=float, help="fixed clip length (default 30)")
    lengths.add_argument(
        "--audio-mix", type=_mix, metavar="MIN:MAX", help="lengths uniform in [MIN, MAX] s"
    )
    source = work.add_mutually_exclusive_group()
    source.add_argument("--audio-dir", type=Path, help="real audio files, cut or tiled")
    source.add_argument(
        "--audio-kind", choices=KINDS, default="speech", help="generated audio (default speech)"
    )
    work.add_argument(
        "--audio-format", choices=sorted(FORMATS), default="wav", help="default: %(default)s"
    )
    work.add_argument(
        "--repeat-audio",
        action="store_true",
        help="send byte-identical audio for equal lengths (by default every request's audio "
        "carries an inaudible unique signature so server caches cannot serve it)",
    )
    work.add_argument("--prompt", default="Describe the audio.", help="default: %(default)s")
    work.add_argument(
        "--turns",
        type=int,
        default=1,
        help="make each request a conversation of this many turns about its audio, each "
        "resending the history (default %(default)s)",
    )
    work.add_argument(
        "--transcribe",
        action="store_true",
        help="send each clip as a file to /v1/audio/transcriptions (the server cuts it into "
        "windows at the pauses; TTFT is the first transcript delta) instead of asking "
        "--prompt in a chat; long clips welcome (--audio-seconds 10800)",
    )
    work.add_argument("--max-tokens", type=int, default=128, help="default: %(default)s")
    work.add_argument("--ignore-eos", action="store_true", help='send "ignore_eos": true')
    work.add_argument("--temperature", type=float, default=0.0, help="default: %(default)s")
    work.add_argument("--no-stream", dest="stream", action="store_false")
    work.add_argument(
        "--seed", type=int, default=0, help="for lengths, arrivals and generated audio"
    )

    load = p.add_argument_group("load shape")
    concurrency = load.add_mutually_exclusive_group()
    concurrency.add_argument(
        "--max-concurrency",
        type=int,
        help="requests (with --turns: conversations) in flight at most",
    )
    concurrency.add_argument(
        "--sweep", type=_positive_ints, metavar="C1,C2,...", help="one pass per concurrency"
    )
    load.add_argument(
        "--request-rate",
        type=float,
        default=float("inf"),
        help="requests (with --turns: conversations) started per second (inf: all at once)",
    )
    load.add_argument(
        "--burstiness", type=float, default=1.0, help="gamma shape of gaps (default 1: Poisson)"
    )
    load.add_argument("--max-duration", type=float, help="seconds per pass; the rest is cut off")
    load.add_argument(
        "--request-timeout",
        type=float,
        default=1200.0,
        help="seconds a connection may make no progress (default %(default)s)",
    )
    load.add_argument(
        "--warmup", type=int, default=1, help="untimed requests per endpoint (default 1)"
    )

    slo = p.add_argument_group("service-level objectives (goodput)")
    slo.add_argument("--slo-ttft-ms", type=float)
    slo.add_argument("--slo-e2el-ms", type=float)

    p.add_argument("--out-dir", type=Path, help="default: ./af3-bench-<UTC time>")
    return p


def redacted_command(words: list[str]) -> str:
    """A command line with API keys masked."""
    words = list(words)
    for i, word in enumerate(words):
        if i > 0 and words[i - 1] in SECRET_FLAGS:
            words[i] = "***"
        elif word.startswith(tuple(f"{flag}=" for flag in SECRET_FLAGS)):
            words[i] = word.split("=", 1)[0] + "=***"
    return shlex.join(words)


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if min(args.num_requests, args.max_tokens, args.turns) < 1:
        parser.error("--num-requests, --max-tokens and --turns must be at least 1")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        parser.error("--max-concurrency must be at least 1")
    if min(args.request_rate, args.burstiness, args.request_timeout, args.max_duration or 1) <= 0:
        parser.error("--request-rate, --burstiness and the time limits must be positive")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if args.slo_ttft_ms is not None and not args.stream:
        parser.error("--slo-ttft-ms needs streaming: TTFT is not measurable with --no-stream")
    if args.transcribe and (args.turns > 1 or args.ignore_eos):
        parser.error("--transcribe sends one file per request: no --turns or --ignore-eos")
    if args.audio_dir is not None and not args.audio_dir.is_dir():
        parser.error(f"--audio-dir {args.audio_dir} is not a directory")


def _request_fields(args: argparse.Namespace) -> dict[str, Any]:
    if args.transcribe:  # form fields; the server sets the tokens per window itself
        return {"temperature": args.temperature, "stream": str(args.stream).lower()}
    fields: dict[str, Any] = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    if args.ignore_eos:
        fields["ignore_eos"] = True
    if args.stream:
        fields |= {"stream": True, "stream_options": {"include_usage": True}}
    return fields


def _endpoints(args: argparse.Namespace) -> list[Endpoint]:
    model = args.model or served_model(args.url, args.api_key)
    endpoints = [Endpoint("primary", args.url, model, args.api_key, tuple(args.metrics_url))]
    if args.compare:
        key = args.compare_api_key or args.api_key
        model = args.compare_model or served_model(args.compare, key)
        endpoints.append(Endpoint("compare", args.compare, model, key))
    return endpoints


def _run_steps(
    args: argparse.Namespace, endpoints: list[Endpoint], workload: Workload
) -> tuple[list[dict[str, Any]], list[report.Run]]:
    """Every step (one per sweep concurrency, else one), each endpoint in turn."""
    fields = _request_fields(args)
    offsets = arrival_offsets(args.num_requests, args.request_rate, args.burstiness, args.seed)
    steps: list[dict[str, Any]] = []
    runs: list[report.Run] = []
    for step, concurrency in enumerate(args.sweep or [args.max_concurrency]):
        # Alternate the order per step (A B, B A, ...) so that drift over the run, such as
        # a warming or throttling GPU, does not always favour the same endpoint.
        order = endpoints if step % 2 == 0 else endpoints[::-1]
        for endpoint in order:
            label = endpoint.name + (f" c={concurrency}" if args.sweep else "")
            conversations = workload.conversations(fields | {"model": endpoint.model}, args.turns)
            result = asyncio.run(
                run_pass(
                    endpoint,
                    conversations,
                    offsets,
                    concurrency,
                    args.max_duration,
                    args.stream,
                    args.request_timeout,
                    label,
                )
            )
            summary = summarize(
                result.records,
                result.duration_s,
                result.unfinished,
                args.slo_ttft_ms,
                args.slo_e2el_ms,
            ) | {"cache": result.cache}
            if result.cache_by_replica is not None:
                summary["cache_by_replica"] = result.cache_by_replica
            runs.append(
                report.Run(step, endpoint.name, concurrency, result.records, summary, label)
            )
        by_name = {r.endpoint: r.summary for r in runs if r.step == step}
        results = {e.name: by_name[e.name] for e in endpoints}  # primary first
        comparison = ratios(results["primary"], results["compare"]) if args.compare else None
        steps.append(
            {
                "step": step,
                "max_concurrency": concurrency,
                "request_rate": args.request_rate,
                "burstiness": args.burstiness,
                "order": [e.name for e in order],
                **results,
                "comparison": comparison,
            }
        )
        title = f"max concurrency {concurrency}" if concurrency else "no concurrency cap"
        unit = "conversations/s" if args.turns > 1 else "req/s"
        title += f", {args.request_rate:g} {unit}" if math.isfinite(args.request_rate) else ""
        print(f"\n=== step {step}: {title} ===\n{report.step_table(results, comparison)}")
        if args.turns > 1:
            print(f"\n{report.per_turn_table(results)}")
    return steps, runs


def _workload_block(args: argparse.Namespace, workload: Workload) -> dict[str, Any]:
    lengths = workload.lengths
    return {
        "num_requests": len(lengths),
        "audio_source": str(args.audio_dir) if args.audio_dir else args.audio_kind,
        "audio_format": args.audio_format,
        "unique_audio": not args.repeat_audio,
        "distinct_clips": workload.distinct_clips,
        "audio_seconds": {
            "min": min(lengths),
            "mean": sum(lengths) / len(lengths),
            "max": max(lengths),
            "total": sum(lengths),
        },
        "endpoint": "/v1/audio/transcriptions" if args.transcribe else "/v1/chat/completions",
        "prompt": args.prompt,
        "turns": args.turns,
        "questions": list(questions(args.prompt, args.turns)),
        "request_fields": _request_fields(args),
    }


def main(argv: list[str] | None = None) -> None:
    # The exact invocation (interpreter and all) when run from a shell.
    command = sys.orig_argv if argv is None else ["af3-bench", *argv]
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    if args.audio_mix is None and args.audio_seconds is None:
        args.audio_seconds = 30.0
    try:
        endpoints = _endpoints(args)
    except RuntimeError as exc:
        sys.exit(f"af3-bench: {exc}")
    started = datetime.datetime.now(datetime.timezone.utc)
    out_dir = args.out_dir or Path(f"af3-bench-{started:%Y%m%d-%H%M%S}")
    out_dir.mkdir(parents=True, exist_ok=True)

    # Everything CPU-heavy happens here, before any clock starts. One workload serves both
    # endpoints: the same clips, and signatures unique across every pass of the run.
    lengths = draw_lengths(args.num_requests, args.audio_seconds, args.audio_mix, args.seed)
    try:
        source = AudioSource(args.audio_kind, args.audio_dir, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    workload = Workload(
        source, lengths, args.audio_format, args.prompt, args.repeat_audio, args.transcribe
    )
    try:
        for endpoint in endpoints:
            fields = _request_fields(args) | {"model": endpoint.model}
            for request in workload.requests(fields, args.warmup):
                asyncio.run(warm_up(endpoint, request, args.stream, args.request_timeout))
    except RuntimeError as exc:
        sys.exit(f"af3-bench: {exc}")

    steps, runs = _run_steps(args, endpoints, workload)
    saturation = None
    if args.sweep:
        saturation = {
            e.name: saturation_point(args.sweep, [s[e.name]["request_throughput"] for s in steps])
            for e in endpoints
        }
        print(f"\n=== sweep ===\n{report.sweep_table(runs, saturation)}")

    runs.sort(key=lambda r: (r.step, r.endpoint != "primary"))
    single = steps[0] if len(steps) == 1 else {}
    secrets = {k: "***" for k in ("api_key", "compare_api_key") if getattr(args, k)}
    report.write_json(
        out_dir / "summary.json",
        {
            "command": redacted_command(command),
            "args": vars(args) | secrets,
            "machine": {
                "platform": platform.platform(),
                "python": platform.python_version(),
                "cpu_count": os.cpu_count(),
                "timestamp": started.isoformat(),
            },
            "workload": _workload_block(args, workload),
            "endpoints": {e.name: {"url": e.url, "model": e.model} for e in endpoints},
            # A single-step run's results, also at the top level; null for a sweep.
            "primary": single.get("primary"),
            "compare": single.get("compare"),
            "comparison": single.get("comparison"),
            "saturation": saturation,
            "steps": steps,
        },
    )
    report.write_requests(out_dir, runs)
    report.plot_ttft_cdf(out_dir / "ttft_cdf.png", runs)
    report.plot_ttft_by_audio_length(out_dir / "ttft_by_audio_length.png", runs)
    if args.sweep:
        report.plot_latency_vs_throughput(out_dir / "latency_vs_throughput.png", runs)
    print(f"\nwrote {out_dir}/")


if __name__ == "__main__":
    main()
