"""Cache evidence from the server: vLLM's prefix-cache and multimodal-cache counters, read
from its Prometheus `/metrics` before and after a pass."""

import sys
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

# vLLM 0.32 (vllm/v1/metrics/loggers.py) counts prefix-cache queries and hits in prompt
# tokens, and multimodal processor-cache queries and hits in items (one per audio).
CACHES = {"prefix_cache": "tokens", "mm_cache": "items"}


def _counter_names(cache: str) -> tuple[str, str]:
    return f"vllm:{cache}_queries_total", f"vllm:{cache}_hits_total"


COUNTERS = frozenset(name for cache in CACHES for name in _counter_names(cache))


def parse_counters(text: str) -> dict[str, float]:
    """The cache counters found in Prometheus text, each summed over its label sets (one
    per engine). Raises ValueError on text that is not Prometheus's format."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in COUNTERS:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def cache_delta(
    before: dict[str, float], after: dict[str, float]
) -> dict[str, dict[str, Any] | None]:
    """Queries, hits and hit rate of each cache between two readings; None for a cache
    whose counters the server does not export."""
    deltas: dict[str, dict[str, Any] | None] = {}
    for cache, unit in CACHES.items():
        names = _counter_names(cache)
        if not all(name in before and name in after for name in names):
            deltas[cache] = None
            continue
        queries, hits = (after[name] - before[name] for name in names)
        rate = hits / queries if queries > 0 else None
        deltas[cache] = {"unit": unit, "queries": queries, "hits": hits, "hit_rate": rate}
    return deltas


async def read_counters(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> dict[str, float] | None:
    """The cache counters at `url`; None, with a warning, when they cannot be read: the
    numbers are evidence, and their absence must not fail a run."""
    try:
        response = await client.get(url, headers=headers)
        response.raise_for_status()
        return parse_counters(response.text)
    except (httpx.HTTPError, ValueError) as exc:
        print(f"af3-bench: warning: no cache counters from {url}: {exc}", file=sys.stderr)
        return None
