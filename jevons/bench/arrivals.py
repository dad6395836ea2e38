"""When each request is sent: Poisson or gamma-bursty arrivals, seeded.

Inter-arrival gaps are Gamma(shape=burstiness, scale=1/(rate*burstiness)): the
mean gap is always 1/rate; burstiness 1 is a Poisson process, below 1 clumps
requests into bursts, above 1 spaces them more evenly (vLLM's definition).
An infinite rate sends everything at once."""
from __future__ import annotations

import math

import numpy as np


def parse_rate(text: str) -> float:
    """A request rate in req/s; "inf" means no pacing."""
    value = float(text)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"a request rate must be positive or inf, got {text!r}")
    return value


def arrival_offsets(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Send times in seconds from the start; the first request goes at 0."""
    if n <= 0:
        return []
    if burstiness <= 0:
        raise ValueError("burstiness must be positive")
    if math.isinf(rate):
        return [0.0] * n
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n - 1)
    return [0.0, *np.cumsum(gaps).tolist()]
