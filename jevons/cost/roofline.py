"""Roofline time of one forward step: the slower of streaming bytes and doing FLOPs.

A step over a batch reads every weight it touches once (the batch shares the
read: that is why batching makes decode cheap) plus each sequence's own KV cache,
and does 2 FLOPs per active parameter per token plus the attention FLOPs. On a
deployment of N devices the weights are assumed evenly sharded, so the N devices'
bandwidth and FLOP/s add up; interconnect time is not modeled (see docs/cost.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from jevons.cost.hardware import Hardware, precision_bytes
from jevons.cost.model_stats import ModelStats


@dataclass(frozen=True)
class Deployment:
    """The machines one copy of the model runs on, and how it is stored."""

    hardware: Hardware
    gpus: int = 1
    precision: str = "bf16"          # weights
    kv_dtype: str = "bf16"           # KV cache; MLA latents are usually kept in bf16
    usd_per_gpu_hour: float | None = None  # None: the hardware preset's price
    memory_utilization: float = 0.9  # the rest is activations, CUDA graphs, fragmentation
    prefill_chunk_tokens: int = 8192  # tokens per prefill step (chunked prefill budget)
    bandwidth_efficiency: float = 1.0  # 1.0 = the pure roofline ceiling
    flops_efficiency: float = 1.0

    def __post_init__(self) -> None:
        precision_bytes(self.precision)  # validate early, with a clear message
        precision_bytes(self.kv_dtype)
        if self.gpus < 1:
            raise ValueError("gpus must be >= 1")

    @property
    def weight_bytes_per_param(self) -> float:
        return precision_bytes(self.precision)

    @property
    def kv_bytes_per_value(self) -> float:
        return precision_bytes(self.kv_dtype)

    @property
    def usd_per_hour(self) -> float:
        per_gpu = self.hardware.usd_per_hour if self.usd_per_gpu_hour is None else self.usd_per_gpu_hour
        return per_gpu * self.gpus

    @property
    def usable_memory_bytes(self) -> float:
        return self.gpus * self.hardware.memory_bytes * self.memory_utilization

    def bandwidth(self) -> float:
        return self.gpus * self.hardware.memory_bandwidth * self.bandwidth_efficiency

    def matmul_flops(self) -> float:
        return self.gpus * self.hardware.flops_for(self.precision) * self.flops_efficiency

    def attention_flops(self) -> float:
        # Attention multiplies activations by the cache, so it runs at the KV dtype's rate.
        return self.gpus * self.hardware.flops_for(self.kv_dtype) * self.flops_efficiency

    def with_gpus(self, gpus: int) -> "Deployment":
        return dataclasses.replace(self, gpus=gpus)


@dataclass(frozen=True)
class StepTime:
    tokens: int        # tokens the step produces (decode) or ingests (prefill)
    memory_s: float
    compute_s: float

    @property
    def seconds(self) -> float:
        return max(self.memory_s, self.compute_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s >= self.compute_s else "compute"

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def decode_step(stats: ModelStats, dep: Deployment, batch: int, context: float) -> StepTime:
    """One decode step: `batch` sequences each emit one token, attending to `context`
    cached tokens. MoE: the batch touches E(1-(1-k/E)^batch) experts per layer."""
    weight_bytes = stats.params_read(batch) * dep.weight_bytes_per_param
    kv_bytes = batch * stats.kv_bytes_per_seq(context, dep.kv_bytes_per_value)
    linear = batch * 2.0 * stats.active_params
    attention = batch * stats.attn_flops_per_token(context, decode=True)
    return StepTime(
        tokens=batch,
        memory_s=(weight_bytes + kv_bytes) / dep.bandwidth(),
        compute_s=linear / dep.matmul_flops() + attention / dep.attention_flops(),
    )


def prefill_step(stats: ModelStats, dep: Deployment, tokens: int, context: float) -> StepTime:
    """One prefill step of `tokens` new prompt tokens that attend on average to
    `context` tokens. Logits are needed only at the last position, so the output
    head's FLOPs are left out; the cached prefix's KV is read once per step."""
    weight_bytes = stats.params_read(tokens) * dep.weight_bytes_per_param
    kv_bytes = stats.kv_bytes_per_seq(context, dep.kv_bytes_per_value)
    linear = tokens * 2.0 * (stats.active_params - stats.lm_head_params)
    attention = tokens * stats.attn_flops_per_token(context, decode=False)
    return StepTime(
        tokens=tokens,
        memory_s=(weight_bytes + kv_bytes) / dep.bandwidth(),
        compute_s=linear / dep.matmul_flops() + attention / dep.attention_flops(),
    )
