"""The capacity and cost planner: what a deployment holds, how fast it runs, what a token costs.

`plan()` turns a model config, a `Deployment` and a `Workload` into a `Plan`, using
the roofline step times from roofline.py. The formulas are written out in
docs/cost.md; `jevons plan` (plan_cli.py) is a thin shell around this module.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from jevons.cost.model_stats import ModelStats, model_stats
from jevons.cost.roofline import Deployment, decode_step, prefill_step
from jevons.loader.presets import get_preset

MAX_GPUS_SEARCHED = 4096


@dataclass(frozen=True)
class Workload:
    input_len: int = 1024
    output_len: int = 256
    cache_hit_rate: float = 0.0              # fraction of input tokens served from the prefix cache
    target_tok_s_per_user: float | None = None  # the decode speed each user must see
    users: int | None = None                 # concurrent users to serve (sizes the fleet)
    concurrency: int | None = None           # force the decode batch instead of choosing it

    def __post_init__(self) -> None:
        if not 0.0 <= self.cache_hit_rate <= 1.0:
            raise ValueError("cache_hit_rate must be within [0, 1]")
        if self.input_len < 0 or self.output_len < 1:
            raise ValueError("input_len must be >= 0 and output_len >= 1")

    @property
    def decode_context(self) -> float:
        """Mean tokens in context while decoding: the prompt plus half the output."""
        return self.input_len + self.output_len / 2.0

    @property
    def tokens_per_sequence(self) -> int:
        return self.input_len + self.output_len


@dataclass(frozen=True)
class Plan:
    """Every figure `jevons plan` reports. Rates are tokens per second; money per hour
    or per million tokens; `source` says whether throughputs are roofline or measured."""

    model: str
    architecture: str
    hardware: str
    gpus: int
    gpus_per_node: int
    precision: str
    kv_dtype: str
    attention: str                      # "MLA" or "MHA/GQA"
    params_total: int
    params_active: int
    params_mtp: int
    weight_bytes: float
    kv_bytes_per_token: float
    kv_bytes_per_token_mha: float       # what full per-head K/V would take
    usable_memory_bytes: float
    kv_budget_bytes: float
    fits: bool
    max_concurrent_sequences: int
    decode_context: float
    decode_tok_s_per_user_batch1: float
    decode_batch: int
    decode_tok_s_per_user: float
    decode_tok_s_aggregate: float
    decode_tok_s_aggregate_max: float   # at max_concurrent_sequences
    decode_bound: str
    prefill_tok_s: float                # cache-miss tokens computed per second
    input_tok_s: float                  # all input tokens per second (hits are nearly free)
    prefill_bound: str
    decode_tok_s_per_node: float
    input_tok_s_per_node: float
    gpus_for_target: int | None         # per model copy, to reach the per-user target at batch 1
    replicas_needed: int | None         # copies of this deployment for `users`
    gpus_needed: int | None
    usd_per_hour: float
    usd_per_million_input_tokens: float
    usd_per_million_output_tokens: float
    usd_per_request: float
    workload: dict[str, Any] = field(default_factory=dict)
    source: str = "roofline"
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


def load_model_config(spec: str) -> tuple[str, dict[str, Any]]:
    """A preset name, a config.json path, or a model directory holding config.json."""
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        with path.open() as f:
            return (path.parent.name or str(path)), json.load(f)
    return spec.lower(), get_preset(spec)


def _max_sequences(stats: ModelStats, dep: Deployment, tokens_per_seq: int) -> tuple[float, int]:
    weights = stats.total_params * dep.weight_bytes_per_param
    budget = dep.usable_memory_bytes - weights
    per_seq = stats.kv_bytes_per_seq(max(tokens_per_seq, 1), dep.kv_bytes_per_value)
    return budget, max(0, math.floor(budget / per_seq))


def _batch_for_target(stats: ModelStats, dep: Deployment, wl: Workload, max_batch: int) -> int:
    """Largest batch whose per-user decode speed still meets the target (0 if none).
    Per-user speed only falls as the batch grows, so bisect."""
    target = wl.target_tok_s_per_user or 0.0

    def ok(b: int) -> bool:
        return 1.0 / decode_step(stats, dep, b, wl.decode_context).seconds >= target

    if max_batch < 1 or not ok(1):
        return 0
    lo, hi = 1, max_batch
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def _gpus_for_target(stats: ModelStats, dep: Deployment, wl: Workload) -> int | None:
    """Fewest GPUs that hold the weights plus one full sequence and reach the
    per-user target at batch 1 (more GPUs add bandwidth under even sharding)."""
    target = wl.target_tok_s_per_user or 0.0
    for n in range(1, MAX_GPUS_SEARCHED + 1):
        d = dep.with_gpus(n)
        if _max_sequences(stats, d, wl.tokens_per_sequence)[1] < 1:
            continue
        if 1.0 / decode_step(stats, d, 1, wl.decode_context).seconds >= target:
            return n
    return None


def usd_per_million(usd_per_hour: float, tok_s: float) -> float:
    """Machine cost of a million tokens produced at `tok_s` (inf if nothing is produced)."""
    if tok_s <= 0:
        return math.inf if usd_per_hour > 0 else 0.0
    return usd_per_hour / 3600.0 / tok_s * 1e6


def plan(config: dict[str, Any], dep: Deployment, wl: Workload, model_name: str = "") -> Plan:
    stats = model_stats(config)
    notes: list[str] = []
    budget, max_seqs = _max_sequences(stats, dep, wl.tokens_per_sequence)
    fits = max_seqs >= 1
    if not fits:
        notes.append("weights plus one full sequence do not fit in usable memory")

    ctx = wl.decode_context
    batch1 = decode_step(stats, dep, 1, ctx)
    if wl.concurrency:
        batch = min(wl.concurrency, max_seqs)
        if batch < wl.concurrency:
            notes.append(f"concurrency {wl.concurrency} capped at {max_seqs}: KV memory")
    elif wl.target_tok_s_per_user:
        batch = _batch_for_target(stats, dep, wl, max_seqs)
        if batch == 0:
            notes.append("per-user target unreachable on this deployment; costs use batch 1")
    else:
        batch = max_seqs
    step = decode_step(stats, dep, max(batch, 1), ctx)
    full = decode_step(stats, dep, max(max_seqs, 1), ctx)

    # Prefill: full chunks of cache-miss tokens, attending to the hit prefix plus half the miss part.
    miss_len = wl.input_len * (1.0 - wl.cache_hit_rate)
    pre_ctx = wl.input_len * wl.cache_hit_rate + miss_len / 2.0
    pre = prefill_step(stats, dep, dep.prefill_chunk_tokens, pre_ctx)
    prefill_tok_s = pre.tokens_per_s
    input_tok_s = prefill_tok_s / (1.0 - wl.cache_hit_rate) if wl.cache_hit_rate < 1.0 else math.inf

    gpus_for_target = _gpus_for_target(stats, dep, wl) if wl.target_tok_s_per_user else None
    replicas = gpus_needed = None
    if wl.users and batch >= 1:
        replicas = math.ceil(wl.users / batch)
        gpus_needed = replicas * dep.gpus

    if not fits:  # nothing runs: report the ceilings, but produce (and price) no tokens
        prefill_tok_s = input_tok_s = 0.0
    nodes = dep.gpus / dep.hardware.gpus_per_node
    decode_agg = 0.0 if not fits else step.tokens_per_s if batch >= 1 else batch1.tokens_per_s
    return _priced(Plan(
        model=model_name or stats.architecture, architecture=stats.architecture,
        hardware=dep.hardware.name, gpus=dep.gpus, gpus_per_node=dep.hardware.gpus_per_node,
        precision=dep.precision, kv_dtype=dep.kv_dtype,
        attention=stats.attention_kind,
        params_total=stats.total_params, params_active=stats.active_params,
        params_mtp=stats.mtp_params,
        weight_bytes=stats.total_params * dep.weight_bytes_per_param,
        kv_bytes_per_token=stats.kv_bytes_per_token(dep.kv_bytes_per_value),
        kv_bytes_per_token_mha=stats.mha_kv_bytes_per_token(dep.kv_bytes_per_value),
        usable_memory_bytes=dep.usable_memory_bytes, kv_budget_bytes=budget, fits=fits,
        max_concurrent_sequences=max_seqs, decode_context=ctx,
        decode_tok_s_per_user_batch1=1.0 / batch1.seconds,
        decode_batch=batch, decode_tok_s_per_user=1.0 / step.seconds,
        decode_tok_s_aggregate=decode_agg,
        decode_tok_s_aggregate_max=full.tokens_per_s if fits else 0.0,
        decode_bound=step.bound, prefill_tok_s=prefill_tok_s, input_tok_s=input_tok_s,
        prefill_bound=pre.bound, decode_tok_s_per_node=decode_agg / nodes,
        input_tok_s_per_node=input_tok_s / nodes, gpus_for_target=gpus_for_target,
        replicas_needed=replicas, gpus_needed=gpus_needed, usd_per_hour=dep.usd_per_hour,
        usd_per_million_input_tokens=0.0, usd_per_million_output_tokens=0.0, usd_per_request=0.0,
        workload=asdict(wl), notes=tuple(notes),
    ), wl)


def _priced(p: Plan, wl: Workload) -> Plan:
    """Fill the cost fields from the plan's throughputs. Each phase is charged as if
    the machine did only that phase for the time it takes (prefill/decode disaggregated)."""
    usd_in = usd_per_million(p.usd_per_hour, p.input_tok_s)
    usd_out = usd_per_million(p.usd_per_hour, p.decode_tok_s_aggregate)
    per_request = (wl.input_len * usd_in + wl.output_len * usd_out) / 1e6
    return replace(p, usd_per_million_input_tokens=usd_in,
                   usd_per_million_output_tokens=usd_out, usd_per_request=per_request)


def reprice(p: Plan, **changes: Any) -> Plan:
    """A plan with some fields replaced (measured throughputs) and costs recomputed."""
    nodes = p.gpus / p.gpus_per_node
    q = replace(p, **changes)
    q = replace(q, decode_tok_s_per_node=q.decode_tok_s_aggregate / nodes,
                input_tok_s_per_node=q.input_tok_s / nodes)
    return _priced(q, Workload(**p.workload))


def output_cost_curve(config: dict[str, Any], dep: Deployment, wl: Workload,
                      batches: list[int]) -> list[tuple[int, float, float]]:
    """(batch, aggregate decode tok/s, $ per million output tokens) for each batch that fits."""
    stats = model_stats(config)
    _, max_seqs = _max_sequences(stats, dep, wl.tokens_per_sequence)
    rows = []
    for b in batches:
        if 1 <= b <= max_seqs:
            tps = decode_step(stats, dep, b, wl.decode_context).tokens_per_s
            rows.append((b, tps, usd_per_million(dep.usd_per_hour, tps)))
    return rows
