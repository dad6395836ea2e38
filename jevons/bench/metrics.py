"""Online serving metrics, defined exactly as vLLM's `bench serve` defines them
and reported under the same names, so numbers compare across tools.

Per request (all in seconds):
  ttft    send -> first chunk that carries generated text
  itl     gaps between consecutive text-carrying chunks (a chunk may hold
          several tokens; vLLM measures chunks too)
  e2el    send -> last chunk ("latency")
  tpot    (e2el - ttft) / (output_tokens - 1), only when output_tokens > 1
Run-level: throughputs divide by the wall-clock duration of the whole run;
mean/median/std/pXX are over completed requests (ITL over every gap of every
request, flattened). Goodput counts requests meeting every SLO given
(ttft/tpot/e2el in ms; a one-token request's TPOT counts as 0, as in vLLM)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SLO_KEYS = ("ttft", "tpot", "e2el")


@dataclass
class RequestResult:
    success: bool
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0  # e2el
    itl: list[float] = field(default_factory=list)
    generated_text: str = ""
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    """`["ttft:500", "tpot:50"]` -> {"ttft": 500.0, "tpot": 50.0} (milliseconds)."""
    slos: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition(":")
        key = key.strip().lower()
        if not sep or key not in SLO_KEYS:
            raise ValueError(f"--goodput takes KEY:MS with KEY in {SLO_KEYS}, got {item!r}")
        ms = float(value)
        if ms < 0:
            raise ValueError(f"an SLO must be non-negative, got {item!r}")
        slos[key] = ms
    return slos


def _stats(name: str, values_s: list[float], percentiles: tuple[float, ...]) -> dict[str, float]:
    """mean/median/std/pXX of a list in seconds, reported in ms. An empty list
    reports zeros, as vLLM does, so a JSON always has every key."""
    arr = np.asarray(values_s, dtype=np.float64) * 1000.0
    have = arr.size > 0
    out = {
        f"mean_{name}_ms": float(arr.mean()) if have else 0.0,
        f"median_{name}_ms": float(np.median(arr)) if have else 0.0,
        f"std_{name}_ms": float(arr.std()) if have else 0.0,
    }
    for p in percentiles:
        label = f"{p:g}".replace(".", "_")
        out[f"p{label}_{name}_ms"] = float(np.percentile(arr, p)) if have else 0.0
    return out


def meets_slos(r: RequestResult, slos: dict[str, float]) -> bool:
    ms = {"ttft": r.ttft * 1000.0, "tpot": (r.tpot or 0.0) * 1000.0, "e2el": r.latency * 1000.0}
    return all(ms[k] <= v for k, v in slos.items())


def calculate_metrics(results: list[RequestResult], duration_s: float, slos: dict[str, float] | None = None,
                      percentiles: tuple[float, ...] = (99.0,)) -> dict[str, float]:
    if duration_s <= 0:
        raise ValueError("duration must be positive")
    done = [r for r in results if r.success]
    total_in = sum(r.prompt_len for r in done)
    total_out = sum(r.output_tokens for r in done)
    m: dict[str, float] = {
        "duration": duration_s,
        "completed": len(done),
        "failed": len(results) - len(done),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(done) / duration_s,
        "output_throughput": total_out / duration_s,
        "total_token_throughput": (total_in + total_out) / duration_s,
    }
    if slos:
        m["request_goodput"] = sum(meets_slos(r, slos) for r in done) / duration_s
    m |= _stats("ttft", [r.ttft for r in done], percentiles)
    m |= _stats("tpot", [t for r in done if (t := r.tpot) is not None], percentiles)
    m |= _stats("itl", [g for r in done for g in r.itl], percentiles)
    m |= _stats("e2el", [r.latency for r in done], percentiles)
    return m
