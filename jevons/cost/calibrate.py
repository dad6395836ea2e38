"""`--calibrate`: replace roofline throughputs with ones measured by a benchmark.

A roofline is a ceiling; what an operator pays for is what the engine actually
does. A bench results JSON (from `jevons bench`, or vLLM/SGLang's serving bench)
names measured rates; any it names replace the plan's, and the costs are
recomputed at the plan's $/hour. The accepted keys are documented in docs/cost.md.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jevons.cost.planner import Plan, reprice

# Synonyms for each measured figure, first match wins.
OUTPUT_KEYS = ("output_throughput", "decode_tok_s", "output_tok_s")
INPUT_KEYS = ("input_throughput", "prefill_tok_s", "input_tok_s")
PER_USER_KEYS = ("decode_tok_s_per_user", "per_user_tok_s")
TPOT_KEYS = ("mean_tpot_ms", "tpot_ms")
CONCURRENCY_KEYS = ("concurrency", "max_concurrency", "batch_size")


@dataclass(frozen=True)
class Measured:
    output_tok_s: float | None = None     # generated tokens per second, all users together
    input_tok_s: float | None = None      # prompt tokens per second (cache hits included)
    per_user_tok_s: float | None = None   # decode speed one user sees
    concurrency: int | None = None        # how many requests ran at once
    source: str = ""


def _first(d: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return float(v)
    return None


def _pick_run(data: Any) -> dict[str, Any]:
    """A results file may hold one run, {"results": run or [runs]}, or [runs]; of
    several runs, take the one with the highest output throughput (the best
    operating point measured). `jevons bench serve --json` keys its results by
    server ({"results": {"jevons": [runs], "llama.cpp": [runs]}}): jevons's
    own runs are the ones that price jevons, else the only server's."""
    if isinstance(data, dict) and "results" in data:
        data = data["results"]
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            data = data.get("jevons", next(iter(data.values())))
    if isinstance(data, list):
        runs = [r for r in data if isinstance(r, dict)]
        if not runs:
            raise ValueError("calibration file holds no result objects")
        return max(runs, key=lambda r: _first(r, OUTPUT_KEYS) or 0.0)
    if not isinstance(data, dict):
        raise ValueError("calibration file must hold a JSON object or a list of objects")
    return data


def parse_measured(data: Any, source: str = "") -> Measured:
    run = _pick_run(data)
    per_user = _first(run, PER_USER_KEYS)
    tpot = _first(run, TPOT_KEYS)
    if per_user is None and tpot is not None:
        per_user = 1000.0 / tpot
    conc = _first(run, CONCURRENCY_KEYS)
    m = Measured(
        output_tok_s=_first(run, OUTPUT_KEYS), input_tok_s=_first(run, INPUT_KEYS),
        per_user_tok_s=per_user, concurrency=int(conc) if conc else None, source=source,
    )
    if m.output_tok_s is None and m.input_tok_s is None and m.per_user_tok_s is None:
        raise ValueError(f"no measured throughput in {source or 'calibration data'}; expected one of "
                         f"{OUTPUT_KEYS + INPUT_KEYS + PER_USER_KEYS + TPOT_KEYS}")
    return m


def load_measured(path: str | Path) -> Measured:
    with open(path) as f:
        return parse_measured(json.load(f), source=str(path))


def apply_measured(p: Plan, m: Measured) -> Plan:
    """The plan with measured figures in place of roofline ones, costs recomputed."""
    changes: dict[str, Any] = {}
    if m.output_tok_s is not None:
        changes["decode_tok_s_aggregate"] = m.output_tok_s
        if m.concurrency:
            changes["decode_batch"] = m.concurrency
    if m.input_tok_s is not None:
        changes["input_tok_s"] = m.input_tok_s
        hit = float(p.workload.get("cache_hit_rate", 0.0))
        changes["prefill_tok_s"] = m.input_tok_s * (1.0 - hit)
    if m.per_user_tok_s is not None:
        changes["decode_tok_s_per_user"] = m.per_user_tok_s
    notes = p.notes + (f"calibrated from {m.source or 'measured results'}: "
                       + ", ".join(sorted(changes)),)
    return reprice(p, **changes, source="measured", notes=notes)
