"""Writing results: per-request JSON and CSV, PNG plots (matplotlib's Agg renderer, no
display needed), and the text tables printed at the end of a run."""

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from af3_bench.client import RequestRecord
from af3_bench.server_metrics import CACHES
from af3_bench.stats import LATENCIES, length_bucket


@dataclass(frozen=True)
class Run:
    """One timed pass: an endpoint at one step (concurrency) of the run."""

    step: int
    endpoint: str
    max_concurrency: int | None
    records: list[RequestRecord]
    summary: dict[str, Any]
    label: str  # for legends and progress bars


def jsonable(value: Any) -> Any:
    """JSON has no infinity: an unbounded request rate is written as "inf"."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(jsonable(data), indent=2) + "\n")


def write_requests(out_dir: Path, runs: Sequence[Run]) -> None:
    rows = [
        {"step": run.step, "endpoint": run.endpoint, "max_concurrency": run.max_concurrency}
        | asdict(record)
        for run in runs
        for record in run.records
    ]
    write_json(out_dir / "requests.json", rows)
    with (out_dir / "requests.csv").open("w", newline="") as out:
        header = ["step", "endpoint", "max_concurrency", *(f.name for f in fields(RequestRecord))]
        writer = csv.DictWriter(out, fieldnames=header)
        writer.writeheader()
        for row in rows:
            writer.writerow(row | {"itl_s": ";".join(f"{gap:.6f}" for gap in row["itl_s"])})


def _figure() -> tuple[Figure, Axes]:
    figure = Figure(figsize=(8, 5), dpi=100, layout="tight")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _finish(figure: Figure, ax: Axes, path: Path, has_data: bool, why_empty: str) -> None:
    if has_data:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, why_empty, ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    figure.savefig(path, format="png")


def plot_ttft_cdf(path: Path, runs: Sequence[Run]) -> None:
    figure, ax = _figure()
    has_data = False
    for run in runs:
        ttft = [r.ttft_s for r in run.records if r.ok and r.ttft_s is not None]
        if ttft:
            has_data = True
            ax.ecdf(ttft, label=run.label)
    ax.set(xlabel="time to first token (s)", ylabel="fraction of requests", title="TTFT CDF")
    _finish(figure, ax, path, has_data, "no TTFT measured (streaming off or no request done)")


def plot_ttft_by_audio_length(path: Path, runs: Sequence[Run]) -> None:
    """Every request as a dot, and each length bucket's median as a line through them."""
    figure, ax = _figure()
    has_data = False
    for run in runs:
        done = [r for r in run.records if r.ok and r.ttft_s is not None]
        if not done:
            continue
        has_data = True
        dots = ax.scatter(
            [r.audio_seconds for r in done], [r.ttft_s for r in done], s=12, alpha=0.5
        )
        buckets: dict[str, list[RequestRecord]] = {}
        for r in sorted(done, key=lambda r: r.audio_seconds):
            buckets.setdefault(length_bucket(r.audio_seconds), []).append(r)
        x = [float(np.median([r.audio_seconds for r in b])) for b in buckets.values()]
        y = [float(np.median([r.ttft_s for r in b])) for b in buckets.values()]
        color = dots.get_facecolor()[0][:3]  # the dots' colour without their transparency
        ax.plot(
            x, y, "D-", color=color, markeredgecolor="black", label=f"{run.label} (bucket median)"
        )
    ax.set(
        xlabel="audio length (s)", ylabel="time to first token (s)", title="TTFT by audio length"
    )
    _finish(figure, ax, path, has_data, "no TTFT measured (streaming off or no request done)")


def plot_latency_vs_throughput(path: Path, runs: Sequence[Run]) -> None:
    """One point per sweep step: request throughput against p50 and p99 E2E latency."""
    figure, ax = _figure()
    has_data = False
    for color, endpoint in enumerate(dict.fromkeys(run.endpoint for run in runs)):
        steps = [r for r in runs if r.endpoint == endpoint and r.summary["completed"]]
        if not steps:
            continue
        has_data = True
        x = [r.summary["request_throughput"] for r in steps]
        for stat, style in (("p50", "o-"), ("p99", "s--")):
            y = [r.summary["e2el_ms"][stat] / 1000 for r in steps]
            ax.plot(x, y, style, color=f"C{color}", label=f"{endpoint} {stat}")
        for r, xi in zip(steps, x, strict=True):
            ax.annotate(f"c={r.max_concurrency}", (xi, r.summary["e2el_ms"]["p50"] / 1000))
    ax.set(
        xlabel="request throughput (req/s)",
        ylabel="end-to-end latency (s)",
        title="Latency vs throughput",
    )
    _finish(figure, ax, path, has_data, "no request completed")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _aligned(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _cache_cell(cache: dict[str, Any] | None) -> str:
    """Hits / queries and the hit rate of one cache over a pass."""
    if cache is None:
        return "-"
    rate = "-" if cache["hit_rate"] is None else f"{cache['hit_rate']:.1%}"
    return f"{cache['hits']:.0f} / {cache['queries']:.0f} ({rate})"


def step_table(summaries: dict[str, dict[str, Any]], ratios: dict[str, Any] | None) -> str:
    """A step's summaries side by side, with the ratio column when comparing."""
    values = list(summaries.values())
    lines = [["metric", *summaries, *(["ratio (>1: primary better)"] if ratios else [])]]

    def add(name: str, cells: list[str], ratio_key: str | None = None) -> None:
        ratio = [_number(ratios.get(ratio_key)) if ratio_key else ""] if ratios else []
        lines.append([name, *cells, *ratio])

    add("completed / failed", [f"{s['completed']} / {s['failed']}" for s in values])
    add("unfinished (deadline, skipped turns)", [str(s["unfinished"]) for s in values])
    errors = [", ".join(f"{k}: {n}" for k, n in s["errors_by_status"].items()) for s in values]
    if any(errors):
        add("errors by status", [e or "-" for e in errors])
    for name, key in (
        ("duration (s)", "duration_s"),
        ("request throughput (req/s)", "request_throughput"),
        ("RTFx (audio s / wall s)", "rtfx"),
        ("output tokens/s", "output_tokens_per_s"),
        ("goodput (req/s)", "goodput"),
    ):
        add(name, [_number(s[key]) for s in values], key)
    for metric in LATENCIES:
        for stat in ("mean", "p50", "p90", "p99"):
            name = f"{metric.removesuffix('_ms').upper()} {stat} (ms)"
            add(name, [_number(s[metric][stat]) for s in values], f"{metric}.{stat}")
    buckets = dict.fromkeys(b["bucket"] for s in values for b in s["ttft_by_audio_length"])
    for bucket in buckets:
        cells = []
        for s in values:
            found = [b for b in s["ttft_by_audio_length"] if b["bucket"] == bucket]
            cells.append(f"{_number(found[0]['p50'])} (n={found[0]['count']})" if found else "-")
        add(f"TTFT p50 (ms), audio {bucket} s", cells)
    for cache, unit in CACHES.items():
        cells = [_cache_cell(None if s["cache"] is None else s["cache"][cache]) for s in values]
        add(f"{cache.replace('_', ' ')} hits / queries ({unit})", cells)
    return _aligned(lines)


def per_turn_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Each conversation turn's request count, mean prompt length and TTFT and E2E
    latency statistics, for each endpoint of a step."""
    stats = ("mean", "p50", "p90", "p99")
    lines = [
        [
            "turn",
            "endpoint",
            "n",
            "prompt tokens",
            "prefix hits",
            *(f"TTFT {stat} ms" for stat in stats),
            *(f"E2EL {stat} ms" for stat in stats),
        ]
    ]
    rows = [(row, endpoint) for endpoint, s in summaries.items() for row in s["per_turn"]]
    rows.sort(key=lambda pair: pair[0]["turn"])  # stable: endpoints in order within a turn
    for row, endpoint in rows:
        lines.append(
            [
                str(row["turn"]),
                endpoint,
                str(row["count"]),
                _number(row["prompt_tokens_mean"]),
                "-" if row["prefix_hit_rate"] is None else f"{row['prefix_hit_rate']:.0%}",
                *(_number(row["ttft_ms"][stat]) for stat in stats),
                *(_number(row["e2el_ms"][stat]) for stat in stats),
            ]
        )
    return _aligned(lines)


def sweep_table(runs: Sequence[Run], saturation: dict[str, int | None]) -> str:
    lines = [["endpoint", "concurrency", "req/s", "RTFx", "tokens/s", "E2E p50 ms", "E2E p99 ms"]]
    for run in sorted(runs, key=lambda r: (r.endpoint != "primary", r.step)):
        s = run.summary
        lines.append(
            [
                run.endpoint,
                str(run.max_concurrency),
                *(_number(s[k]) for k in ("request_throughput", "rtfx", "output_tokens_per_s")),
                _number(s["e2el_ms"]["p50"]),
                _number(s["e2el_ms"]["p99"]),
            ]
        )
    table = _aligned(lines)
    for endpoint, concurrency in saturation.items():
        where = f"concurrency {concurrency}" if concurrency else "not reached in this sweep"
        table += f"\nsaturation point ({endpoint}): {where}"
    return table
