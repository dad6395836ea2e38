"""Which backend runs each op: one signature per op, two backends.

- "torch": the plain-torch references, on any device (the CPU path).
- "triton": the kernels in jevons/kernels/triton, chosen automatically on a
  CUDA device when Triton is importable.
- "cpu": the C kernels in jevons/kernels/cpu (compiled on first use), chosen
  automatically on the CPU when they build; ops without a C kernel keep their
  torch reference.

JEVONS_KERNEL_BACKEND=torch|triton|cpu forces a backend (JEVONS_CPU_KERNELS=0
keeps the CPU on the references). Forcing "triton" on a
CPU tensor works only under TRITON_INTERPRET=1 (the tests' mode).

Each backend is one function that imports its implementations and returns
them as a KernelOps; it runs on first use, so importing this module never
imports Triton.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

import torch

# The plain-torch references of the elementwise ops, kept importable from here.
from jevons import runtime
from jevons.kernels.torch_ref.elementwise import (  # noqa: F401
    torch_add_rms_norm, torch_fp8_linear, torch_rms_norm, torch_silu_and_mul,
)

BACKENDS = ("torch", "triton", "cpu")
ENV_VAR = "JEVONS_KERNEL_BACKEND"

@functools.cache
def triton_available() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install counts as absent
        return False
    return True


def backend_for(device: torch.device | str) -> str:
    """The backend for tensors on `device`: the env override, else triton on
    CUDA when importable, else torch."""
    forced = runtime.current().kernel_backend
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={forced!r}; expected one of {', '.join(BACKENDS)}")
        if forced == "triton" and not triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton but triton is not installed")
        if forced == "triton" and torch.device(device).type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"{ENV_VAR}=triton on a CPU tensor needs TRITON_INTERPRET=1")
        if forced == "cpu" and not cpu_kernels_available():
            raise RuntimeError(f"{ENV_VAR}=cpu but the C kernels could not be built (see the log)")
        return forced
    dev = torch.device(device)
    if dev.type == "cuda":
        return "triton" if triton_available() else "torch"
    return "cpu" if dev.type == "cpu" and cpu_kernels_available() else "torch"


def cpu_kernels_available() -> bool:
    from jevons.kernels.cpu.build import load

    return load() is not None


@dataclass(frozen=True)
class KernelOps:
    """One backend's implementation of every op, as attributes (one signature per op)."""

    backend: str
    # (k_cache, v_cache, k, v, slot_mapping) -> None
    write_kv: Callable[..., None]
    # (q, k, v, k_cache, v_cache, meta, scale) -> [N, Hq, Dv]
    paged_attention: Callable[..., torch.Tensor]
    # (kv_cache, latent, slot_mapping) -> None
    write_latent: Callable[..., None]
    # (q_nope, q_rope, latent, kv_cache, meta, w_kv_b, scale, decode_form, prefill_form) -> [N, H, Dv]
    mla_attention: Callable[..., torch.Tensor]
    # (q_nope, q_rope, kv_cache, block_tables, positions | None, lens, w_kv_b, scale) -> [B, H, Dv]
    sparse_mla_decode: Callable[..., torch.Tensor]
    # (q, w, key_cache, block_tables, lens, scale, fp8 | None) -> [B, max(lens)] float32
    index_scores_decode: Callable[..., torch.Tensor]
    # (x, w13, w2, topk_weights, topk_ids) -> [T, H]
    fused_experts: Callable[..., torch.Tensor]
    # (router_logits, RouterConfig, correction_bias) -> (weights [T, k] fp32, ids [T, k] int64)
    select_experts: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    # (x [T, H], gate_weight [E, H], RouterConfig, correction_bias) -> select_experts on x @ W^T (fp32)
    route_experts: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    # (x, weight, eps) -> normalized x
    rms_norm: Callable[..., torch.Tensor]
    # (x, residual, weight, eps) -> (rms_norm(x + residual), x + residual)
    fused_add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    # (q, k, cos, sin) -> (q, k) rotated, rotate-half layout
    rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    # (x [..., 2I]) -> silu(x[..., :I]) * x[..., I:]
    silu_and_mul: Callable[..., torch.Tensor]
    # (x, w_fp8, w_scale_inv, block, bias) -> x @ W^T
    fp8_linear: Callable[..., torch.Tensor]


OP_NAMES = tuple(f.name for f in fields(KernelOps) if f.name != "backend")


def _torch_ops() -> KernelOps:
    from jevons.kernels.torch_ref import elementwise, mla_attention, moe, moe_routing, paged_attention, rotary, sparse_mla

    return KernelOps(
        backend="torch",
        write_kv=paged_attention.write_kv,
        paged_attention=paged_attention.paged_attention,
        write_latent=mla_attention.write_latent,
        mla_attention=mla_attention.mla_attention,
        sparse_mla_decode=sparse_mla.sparse_mla_decode,
        index_scores_decode=sparse_mla.index_scores_decode,
        fused_experts=moe.fused_experts,
        select_experts=moe_routing.select_experts,
        route_experts=moe_routing.route_experts,
        rms_norm=elementwise.torch_rms_norm,
        fused_add_rms_norm=elementwise.torch_add_rms_norm,
        rotary=rotary.apply_rotary,
        silu_and_mul=elementwise.torch_silu_and_mul,
        fp8_linear=elementwise.torch_fp8_linear,
    )


def _gate_then(select: Callable[..., Any]) -> Callable[..., Any]:
    """route_experts for a backend with only select_experts: the float32 gate, then it."""
    from jevons.kernels.torch_ref.moe_routing import gate_logits

    def route_experts(x: torch.Tensor, gate_weight: torch.Tensor, cfg: Any, correction_bias: Any = None):
        return select(gate_logits(x, gate_weight), cfg, correction_bias)

    return route_experts


def _triton_ops() -> KernelOps:
    from jevons.kernels.triton import fp8_gemm, fused_moe, kv_write, mla_decode, paged_attention, rmsnorm, rope, topk_routing

    return replace(
        _torch_ops(),  # silu_and_mul stays torch on the GPU: its MoE kernel fuses it itself
        backend="triton",
        write_kv=kv_write.write_kv,
        paged_attention=paged_attention.paged_attention,
        write_latent=kv_write.write_latent,
        mla_attention=mla_decode.mla_attention,
        fused_experts=fused_moe.fused_experts,
        select_experts=topk_routing.select_experts,
        route_experts=_gate_then(topk_routing.select_experts),
        rms_norm=rmsnorm.rms_norm,
        fused_add_rms_norm=rmsnorm.fused_add_rms_norm,
        rotary=rope.apply_rotary,
        fp8_linear=fp8_gemm.fp8_linear,
    )


def _cpu_ops() -> KernelOps:
    """The C kernels where there is one; every other op keeps its torch reference."""
    from jevons.kernels.cpu import dsa_index, elementwise, moe_router, paged_attention, sparse_mla

    return replace(
        _torch_ops(),
        backend="cpu",
        paged_attention=paged_attention.paged_attention,
        sparse_mla_decode=sparse_mla.sparse_mla_decode,
        index_scores_decode=dsa_index.index_scores_decode,
        select_experts=moe_router.select_experts,
        route_experts=moe_router.route_experts,
        write_kv=elementwise.write_kv,
        rms_norm=elementwise.rms_norm,
        fused_add_rms_norm=elementwise.fused_add_rms_norm,
        rotary=elementwise.apply_rotary,
        silu_and_mul=elementwise.silu_and_mul,
    )


# Each backend's ops are imported only when first asked for, so importing this
# module never imports Triton.
_BACKEND_OPS: dict[str, Callable[[], KernelOps]] = {"torch": _torch_ops, "triton": _triton_ops, "cpu": _cpu_ops}


@functools.cache
def _ops(backend: str) -> KernelOps:
    return _BACKEND_OPS[backend]()


def get_ops(backend: str) -> KernelOps:
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return _ops(backend)


_by_device: dict[tuple[str, str | None], KernelOps] = {}


def ops_for(device: torch.device | str) -> KernelOps:
    """What a layer calls each forward, so it must be cheap: one dict hit,
    keyed by device type and the backend override in force (jevons/runtime.py)."""
    dev_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    key = (dev_type, runtime.current().kernel_backend)
    ops = _by_device.get(key)
    if ops is None:
        ops = _by_device[key] = _ops(backend_for(device))
    return ops


def get_op(name: str, device: torch.device | str = "cpu", backend: str | None = None) -> Callable[..., Any]:
    if name not in OP_NAMES:
        raise ValueError(f"unknown op {name!r}; available: {', '.join(sorted(OP_NAMES))}")
    return getattr(get_ops(backend or backend_for(device)), name)
