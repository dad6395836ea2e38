"""The parallel layout `jevons plan` recommends for a model on a set of
devices, as the `jevons serve` flags that run it.

The rule, in the order it is applied:
- Tensor parallelism (TP) only as wide as memory needs: the smallest TP whose
  shard of the weights plus the KV cache of `min_sequences` full sequences fits
  one device. Every TP layer costs two all-reduces per step, so wider TP buys
  bandwidth at the price of latency that the roofline does not see.
- Expert parallelism (EP) on for a MoE model whenever TP > 1: each rank holds
  E/TP whole experts instead of 1/TP of every expert, so an expert's GEMMs keep
  their full width (and int4's groups of 32 stay whole); the memory is the same.
- Data parallelism (DP) with the devices left: DP = devices // TP replicas,
  each with its own KV cache. Under MLA every TP rank caches the whole latent
  (docs/distributed.md), so KV capacity grows with DP, not with TP.
- Nodes: ceil(TP * DP / devices per node); with more than one node the Ray
  executor places the ranks (`--distributed-executor-backend ray`).

Weights are sized as jevons holds them today: FP8 checkpoints dequantized to
bf16 (no FP8 GEMM yet); under -q int8/int4 the routed experts stay bf16 except
int4 on a CPU (layers/moe_int4.py). DP-attention is not recommended yet:
each rank still allocates the whole KV pool (docs/distributed.md).
"""
from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass
from typing import Any

from jevons.cost.hardware import precision_bytes
from jevons.cost.model_stats import ModelStats
from jevons.cost.roofline import Deployment

# The architectures jevons shards over TP ranks: models/registry.py's
# _TENSOR_PARALLEL (tests/test_plan_layout.py checks that they agree; the
# planner does not import the models, which would load torch).
TP_ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM",
})


@dataclass(frozen=True)
class Layout:
    devices: int  # all the devices given
    devices_per_node: int
    tensor_parallel: int
    expert_parallel: bool
    data_parallel: int
    nodes: int
    device: str  # "cuda" or "cpu"
    quantization: str | None  # the -q flag, if the precision asks for one
    fits: bool
    notes: tuple[str, ...] = ()

    def serve_flags(self) -> list[str]:
        flags: list[str] = []
        if self.device != "cpu":
            flags += ["--device", self.device]
        if self.quantization:
            flags += ["--quantization", self.quantization]
        if self.tensor_parallel > 1:
            flags += ["--tensor-parallel-size", str(self.tensor_parallel)]
        if self.expert_parallel:
            flags += ["--enable-expert-parallel"]
        if self.data_parallel > 1:
            flags += ["--data-parallel-size", str(self.data_parallel)]
        if self.nodes > 1:
            flags += ["--distributed-executor-backend", "ray"]
        return flags

    def command(self, model: str) -> str:
        return shlex.join(["jevons", "serve", "--model", model, *self.serve_flags()])

    def describe(self) -> str:
        ep = f", experts EP {self.tensor_parallel}" if self.expert_parallel else ""
        used = self.tensor_parallel * self.data_parallel
        return (f"TP {self.tensor_parallel}{ep} x DP {self.data_parallel} = {used} of {self.devices} devices, "
                f"{self.nodes} node{'s' if self.nodes > 1 else ''} of {self.devices_per_node}")

    def to_dict(self, model: str) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        out["serve_flags"] = self.serve_flags()
        out["serve_command"] = self.command(model)
        return out


def _tp_ok(cfg: dict[str, Any], stats: ModelStats, tp: int) -> tuple[bool, bool]:
    """(TP of this size shards the model, with EP) under jevons' divisibility rules."""
    heads = int(cfg.get("num_attention_heads") or stats.num_heads)
    kv = int(cfg.get("num_key_value_heads") or heads)
    inter = int(cfg.get("intermediate_size") or 0)
    if heads % tp or (inter and inter % tp):
        return False, False
    if not stats.is_mla and (kv % tp if kv >= tp else tp % kv):
        return False, False
    if not stats.is_moe:
        return True, False
    moe_inter = int(cfg.get("moe_intermediate_size") or 0)
    if (moe_inter * int(cfg.get("n_shared_experts") or 0)) % tp:  # shared experts are cut either way
        return False, False
    ep = stats.routed_experts % tp == 0
    return ep or moe_inter % tp == 0, ep


def weight_bytes(stats: ModelStats, precision: str, device: str) -> float:
    """The bytes jevons holds the weights in at `precision` on `device`."""
    held = "bf16" if precision == "fp8" else precision  # FP8 is dequantized at load
    routed = stats.expert_params * stats.routed_experts * stats.moe_layers
    experts = held if held not in ("int4", "int8") or (held, device) == ("int4", "cpu") else "bf16"
    return (stats.total_params - routed) * precision_bytes(held) + routed * precision_bytes(experts)


def _rank_bytes(cfg: dict[str, Any], stats: ModelStats, dep: Deployment, weights: float, tp: int,
                seqs: int, tokens: int) -> float:
    """About what one TP rank holds: its share of the weights (the small
    replicated parts ignored) and its KV cache for `seqs` full sequences."""
    kv = stats.kv_bytes_per_seq(tokens, dep.kv_bytes_per_value) * seqs
    if not stats.is_mla:  # GQA: a rank caches its KV heads only
        heads = int(cfg.get("num_key_value_heads") or cfg.get("num_attention_heads") or 1)
        kv *= max(1, heads // tp) / heads
    return weights / tp + kv


def recommend_layout(cfg: dict[str, Any], stats: ModelStats, dep: Deployment, devices: int,
                     tokens_per_sequence: int, min_sequences: int = 1) -> Layout:
    hw = dep.hardware
    per_node = max(1, hw.gpus_per_node)
    device = "cpu" if hw.name.lower().startswith("cpu") else "cuda"
    weights = weight_bytes(stats, dep.precision, device)
    quant = dep.precision if dep.precision in ("int4", "int8") else None
    per_device = hw.memory_bytes * dep.memory_utilization
    notes: list[str] = []
    if dep.precision == "fp8":
        notes.append("FP8 weights are held dequantized (bf16) by jevons today: sized at 2 bytes a weight")
    if stats.is_moe and quant and (quant, device) != ("int4", "cpu"):
        notes.append(f"-q {quant} leaves the routed experts in bf16 here (int4 experts run on CPUs only): sized so")
    sizes = [t for t in range(1, devices + 1) if devices % t == 0 or t & (t - 1) == 0]
    valid = [(t, ep) for t in sizes for ok, ep in [_tp_ok(cfg, stats, t)] if ok]
    arch = stats.architecture
    if arch not in TP_ARCHITECTURES:
        valid = valid[:1]  # TP 1 only
        notes.append(f"jevons has no tensor parallelism for {arch} yet: one device per replica")

    def fits(t: int) -> bool:
        return _rank_bytes(cfg, stats, dep, weights, t, min_sequences, tokens_per_sequence) <= per_device

    fitting = [(t, ep) for t, ep in valid if fits(t)]
    ok = bool(fitting)
    tp, ep = fitting[0] if ok else valid[-1]
    if not ok:
        notes.append(f"no TP size jevons can shard this model into fits one device's "
                     f"{per_device / 1e9:,.0f} GB with {min_sequences} sequence(s); showing TP {tp}")
    dp = max(1, devices // tp)
    nodes = math.ceil(tp * dp / per_node)
    if tp > per_node:
        notes.append(f"TP {tp} spans nodes: its all-reduces cross the network")
    if devices % tp:
        notes.append(f"{devices % tp} device(s) left idle: TP {tp} does not divide {devices}")
    if stats.is_moe and tp > 1 and not ep:
        notes.append(f"{stats.routed_experts} experts do not split over {tp} ranks: each expert is cut instead")
    return Layout(devices=devices, devices_per_node=per_node, tensor_parallel=tp, expert_parallel=ep and tp > 1,
                  data_parallel=dp, nodes=nodes, device=device, quantization=quant, fits=ok, notes=tuple(notes))
