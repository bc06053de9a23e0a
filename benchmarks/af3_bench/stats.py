"""Pure statistics over request records: latency percentiles, throughput, RTFx, goodput,
TTFT by audio length, latencies per conversation turn, a sweep's saturation point, and
primary/compare ratios. Records hold seconds; summaries report latencies in milliseconds."""

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from af3_bench.client import RequestRecord

PERCENTILES = (50, 90, 99)
# Audio-length buckets for TTFT, as (low, high] intervals in seconds, plus one above the
# last: up to AF3's 10 minutes, Music Flamingo's 20 and Audio Flamingo Next's 30.
LENGTH_EDGES = (0, 30, 60, 120, 300, 600, 1200, 1800)
LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")
HIGHER_IS_BETTER = ("request_throughput", "rtfx", "output_tokens_per_s", "goodput")


def distribution(values_s: Sequence[float]) -> dict[str, float | None]:
    """Mean and percentiles (linear interpolation, as numpy's default) in milliseconds."""
    if not values_s:
        return {"mean": None, **{f"p{q}": None for q in PERCENTILES}}
    ms = np.asarray(values_s, dtype=float) * 1000.0
    return {"mean": float(ms.mean()), **{f"p{q}": float(np.percentile(ms, q)) for q in PERCENTILES}}


def length_bucket(seconds: float) -> str:
    for low, high in zip(LENGTH_EDGES, LENGTH_EDGES[1:], strict=False):
        if seconds <= high:
            return f"{low}-{high}"
    return f"{LENGTH_EDGES[-1]}+"


def ttft_by_audio_length(records: Sequence[RequestRecord]) -> list[dict[str, Any]]:
    """TTFT distribution per audio-length bucket, over the buckets that have requests."""
    buckets: dict[str, list[float]] = {}
    for r in sorted(records, key=lambda r: r.audio_seconds):
        if r.ok and r.ttft_s is not None:
            buckets.setdefault(length_bucket(r.audio_seconds), []).append(r.ttft_s)
    return [
        {"bucket": name, "count": len(values), **distribution(values)}
        for name, values in buckets.items()
    ]


# vLLM caches whole KV blocks: 16 tokens on GPUs by default, 128 on CPUs.
MAX_BLOCK_TOKENS = 128


def prefix_hit(cached_tokens: int, audio_tokens: int) -> bool:
    """Whether a later turn found its audio in the prefix cache: all of it but at most the
    last partial block. A miss computes it again (about nothing cached)."""
    return cached_tokens >= audio_tokens - MAX_BLOCK_TOKENS


def per_turn(records: Sequence[RequestRecord]) -> list[dict[str, Any]]:
    """For each turn of the conversations (--turns), its completed and failed requests,
    their mean prompt length and TTFT and E2E latency distributions: a server that reuses
    the cached audio and history answers turns 2+ sooner, though their prompts are longer."""
    rows: list[dict[str, Any]] = []
    for turn in sorted({r.turn for r in records}):
        these = [r for r in records if r.turn == turn]
        done = [r for r in these if r.ok]
        prompts = [r.prompt_tokens for r in done if r.prompt_tokens is not None]
        known = [r for r in done if r.cached_tokens is not None and r.audio_tokens]
        hits = sum(1 for r in known if prefix_hit(r.cached_tokens, r.audio_tokens))
        rows.append(
            {
                "turn": turn,
                "count": len(done),
                "failed": len(these) - len(done),
                "prompt_tokens_mean": sum(prompts) / len(prompts) if prompts else None,
                "prefix_hits": hits,
                "prefix_hit_rate": hits / len(known) if known else None,
                "ttft_ms": distribution([r.ttft_s for r in done if r.ttft_s is not None]),
                "e2el_ms": distribution([r.e2el_s for r in done if r.e2el_s is not None]),
            }
        )
    return rows


def meets_slo(record: RequestRecord, slo_ttft_ms: float | None, slo_e2el_ms: float | None) -> bool:
    """Completed within every SLO given; a TTFT SLO fails when no TTFT was measured."""
    if not record.ok:
        return False
    if slo_ttft_ms is not None and (record.ttft_s is None or record.ttft_s * 1000 > slo_ttft_ms):
        return False
    return slo_e2el_ms is None or (
        record.e2el_s is not None and record.e2el_s * 1000 <= slo_e2el_ms
    )


def goodput(
    records: Sequence[RequestRecord],
    duration_s: float,
    slo_ttft_ms: float | None,
    slo_e2el_ms: float | None,
) -> float | None:
    """Requests per second that met the SLOs; None when no SLO was given."""
    if (slo_ttft_ms is None and slo_e2el_ms is None) or duration_s <= 0:
        return None
    return sum(meets_slo(r, slo_ttft_ms, slo_e2el_ms) for r in records) / duration_s


def _error_key(record: RequestRecord) -> str:
    if record.status is None:
        return "no_response"
    return "error_after_200" if record.status == 200 else str(record.status)


def summarize(
    records: Sequence[RequestRecord],
    duration_s: float,
    unfinished: int = 0,
    slo_ttft_ms: float | None = None,
    slo_e2el_ms: float | None = None,
) -> dict[str, Any]:
    """One pass: counts, throughputs over its wall time, and latency distributions of the
    completed requests. `unfinished`: requests cut off by --max-duration or never sent."""
    done = [r for r in records if r.ok]

    def per_second(total: float) -> float | None:
        return total / duration_s if duration_s > 0 else None

    # A conversation's audio counts once, at its first turn: later turns resend it for
    # the server to find in its caches, and counting it again would inflate RTFx.
    audio_seconds = sum(r.audio_seconds for r in done if r.turn == 1)
    completion_tokens = sum(r.completion_tokens or 0 for r in done)
    return {
        "completed": len(done),
        "failed": len(records) - len(done),
        "unfinished": unfinished,
        "errors_by_status": dict(Counter(_error_key(r) for r in records if not r.ok)),
        "duration_s": duration_s,
        "request_throughput": per_second(len(done)),
        "rtfx": per_second(audio_seconds),
        "output_tokens_per_s": per_second(completion_tokens),
        "goodput": goodput(records, duration_s, slo_ttft_ms, slo_e2el_ms),
        "total_audio_seconds": audio_seconds,
        "total_prompt_tokens": sum(r.prompt_tokens or 0 for r in done),
        "total_completion_tokens": completion_tokens,
        "total_audio_tokens": sum(r.audio_tokens or 0 for r in done),
        "ttft_ms": distribution([r.ttft_s for r in done if r.ttft_s is not None]),
        "tpot_ms": distribution([r.tpot_s for r in done if r.tpot_s is not None]),
        "itl_ms": distribution([gap for r in done for gap in r.itl_s]),
        "e2el_ms": distribution([r.e2el_s for r in done if r.e2el_s is not None]),
        "ttft_by_audio_length": ttft_by_audio_length(done),
        "per_turn": per_turn(records),
    }


def saturation_point(
    concurrencies: Sequence[int], throughputs: Sequence[float | None], threshold: float = 0.05
) -> int | None:
    """The first concurrency whose successor raises request throughput by no more than
    `threshold` (5%); None if throughput kept rising through the sweep."""
    for i in range(len(concurrencies) - 1):
        now, after = throughputs[i] or 0.0, throughputs[i + 1] or 0.0
        if after <= now * (1 + threshold):
            return concurrencies[i]
    return None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def ratios(primary: dict[str, Any], compare: dict[str, Any]) -> dict[str, float | None]:
    """Each ratio is oriented so that > 1 means the primary endpoint did better:
    primary / compare for rates, compare / primary for latencies."""
    table = {key: _ratio(primary[key], compare[key]) for key in HIGHER_IS_BETTER}
    for metric in LATENCIES:
        for stat in primary[metric]:
            table[f"{metric}.{stat}"] = _ratio(compare[metric][stat], primary[metric][stat])
    return table
