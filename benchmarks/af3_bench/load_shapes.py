"""Arrival schedules: when each request of a pass is due, from the pass's start."""

import math

import numpy as np


def arrival_offsets(count: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Seconds from the start at which each request is due. Inter-arrival gaps are
    gamma-distributed with shape `burstiness` and mean 1/rate: burstiness 1 is a Poisson
    process, below 1 burstier, above 1 more regular. An infinite rate sends all at once.
    The first request is due at 0."""
    if count == 0 or math.isinf(rate):
        return [0.0] * count
    if rate <= 0 or burstiness <= 0:
        raise ValueError("the request rate and burstiness must be positive")
    gaps = np.random.default_rng(seed).gamma(burstiness, 1.0 / (rate * burstiness), count - 1)
    return [0.0, *np.cumsum(gaps).tolist()]
