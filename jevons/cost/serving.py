"""Serving cost: the $ per million output tokens the machine is producing right now.

Billing says what a request is charged; this says what it cost to make. The
machine costs `usd_per_hour` whether busy or idle, so the figure is simply the
money spent over a period divided by the tokens produced in it: idle time makes
tokens dearer, which is the point of showing it.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


def usd_per_million_tokens(usd_per_hour: float, tokens: int, seconds: float) -> float | None:
    """Machine cost per million tokens over a period; None when nothing was produced."""
    if tokens <= 0 or seconds <= 0:
        return None
    return usd_per_hour * seconds / 3600.0 / tokens * 1e6


@dataclass(frozen=True)
class ServingCostSnapshot:
    usd_per_hour: float
    seconds: float
    output_tokens: int
    usd_spent: float
    usd_per_million_output_tokens: float | None


class ServingCostMeter:
    """Counts output tokens since start; `snapshot` turns the count and the elapsed
    time into $ per million output tokens for /metrics.

    Tokens arrive through `add`, or are read from a counter the engine already keeps
    (`tokens`, e.g. lambda: core.generation_tokens_total): the server reads it at
    scrape time, so metering costs nothing per step. The counter's value at
    construction is the baseline, so only tokens made since then count."""

    def __init__(self, usd_per_hour: float, clock: Callable[[], float] = time.monotonic,
                 tokens: Callable[[], int] | None = None) -> None:
        self.usd_per_hour = usd_per_hour
        self._clock = clock
        self._start = clock()
        self._source = tokens
        self._baseline = tokens() if tokens is not None else 0
        self._tokens = 0
        self._lock = threading.Lock()

    def add(self, output_tokens: int) -> None:
        with self._lock:
            self._tokens += output_tokens

    def snapshot(self) -> ServingCostSnapshot:
        with self._lock:
            tokens = self._tokens
        if self._source is not None:
            tokens += self._source() - self._baseline
        seconds = self._clock() - self._start
        return ServingCostSnapshot(
            usd_per_hour=self.usd_per_hour, seconds=seconds, output_tokens=tokens,
            usd_spent=self.usd_per_hour * seconds / 3600.0,
            usd_per_million_output_tokens=usd_per_million_tokens(self.usd_per_hour, tokens, seconds),
        )
