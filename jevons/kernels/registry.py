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

Every implementation is imported lazily, so importing this module never
imports Triton.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

# The plain-torch references of the elementwise ops, kept importable from here.
from jevons import runtime
from jevons.kernels.torch_ref.elementwise import (  # noqa: F401
    torch_add_rms_norm, torch_fp8_linear, torch_rms_norm, torch_silu_and_mul,
)

BACKENDS = ("torch", "triton", "cpu")
ENV_VAR = "JEVONS_KERNEL_BACKEND"

# Op name -> (torch reference, triton kernel) as "module:function".
_OPS: dict[str, tuple[str, str]] = {
    # (k_cache, v_cache, k, v, slot_mapping) -> None
    "write_kv": ("jevons.kernels.torch_ref.paged_attention:write_kv", "jevons.kernels.triton.kv_write:write_kv"),
    # (q, k, v, k_cache, v_cache, meta, scale) -> [N, Hq, Dv]
    "paged_attention": (
        "jevons.kernels.torch_ref.paged_attention:paged_attention",
        "jevons.kernels.triton.paged_attention:paged_attention",
    ),
    # (kv_cache, latent, slot_mapping) -> None
    "write_latent": (
        "jevons.kernels.torch_ref.mla_attention:write_latent", "jevons.kernels.triton.kv_write:write_latent"
    ),
    # (q_nope, q_rope, latent, kv_cache, meta, w_kv_b, scale, decode_form, prefill_form) -> [N, H, Dv]
    "mla_attention": (
        "jevons.kernels.torch_ref.mla_attention:mla_attention", "jevons.kernels.triton.mla_decode:mla_attention"
    ),
    # (x, w13, w2, topk_weights, topk_ids) -> [T, H]
    "fused_experts": ("jevons.kernels.torch_ref.moe:fused_experts", "jevons.kernels.triton.fused_moe:fused_experts"),
    # (router_logits, RouterConfig, correction_bias) -> (weights [T, k] fp32, ids [T, k] int64)
    "select_experts": (
        "jevons.kernels.torch_ref.moe_routing:select_experts", "jevons.kernels.triton.topk_routing:select_experts"
    ),
    # (x, weight, eps) -> normalized x
    "rms_norm": ("jevons.kernels.torch_ref.elementwise:torch_rms_norm", "jevons.kernels.triton.rmsnorm:rms_norm"),
    # (x, residual, weight, eps) -> (rms_norm(x + residual), x + residual)
    "fused_add_rms_norm": (
        "jevons.kernels.torch_ref.elementwise:torch_add_rms_norm", "jevons.kernels.triton.rmsnorm:fused_add_rms_norm"
    ),
    # (q, k, cos, sin) -> (q, k) rotated, rotate-half layout
    "rotary": ("jevons.kernels.torch_ref.rotary:apply_rotary", "jevons.kernels.triton.rope:apply_rotary"),
    # (x [..., 2I]) -> silu(x[..., :I]) * x[..., I:]  (the GPU keeps torch: its MoE fuses this itself)
    "silu_and_mul": ("jevons.kernels.torch_ref.elementwise:torch_silu_and_mul", "jevons.kernels.torch_ref.elementwise:torch_silu_and_mul"),
    # (x, w_fp8, w_scale_inv, block, bias) -> x @ W^T
    "fp8_linear": ("jevons.kernels.torch_ref.elementwise:torch_fp8_linear", "jevons.kernels.triton.fp8_gemm:fp8_linear"),
}

# Ops the "cpu" backend runs in C; every other op keeps its torch reference there.
_CPU_OPS: dict[str, str] = {
    "paged_attention": "jevons.kernels.cpu.paged_attention:paged_attention",
    "write_kv": "jevons.kernels.cpu.elementwise:write_kv",
    "rms_norm": "jevons.kernels.cpu.elementwise:rms_norm",
    "fused_add_rms_norm": "jevons.kernels.cpu.elementwise:fused_add_rms_norm",
    "rotary": "jevons.kernels.cpu.elementwise:apply_rotary",
    "silu_and_mul": "jevons.kernels.cpu.elementwise:silu_and_mul",
}


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


def _resolve(path: str) -> Callable[..., Any]:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class KernelOps:
    """One backend's implementation of every op, as attributes."""

    backend: str
    write_kv: Callable[..., None]
    paged_attention: Callable[..., torch.Tensor]
    write_latent: Callable[..., None]
    mla_attention: Callable[..., torch.Tensor]
    fused_experts: Callable[..., torch.Tensor]
    select_experts: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rms_norm: Callable[..., torch.Tensor]
    fused_add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[..., torch.Tensor]
    fp8_linear: Callable[..., torch.Tensor]


@functools.cache
def _ops(backend: str) -> KernelOps:
    if backend == "cpu":
        paths = {name: _CPU_OPS.get(name, torch_path) for name, (torch_path, _) in _OPS.items()}
    else:
        col = BACKENDS.index(backend)
        paths = {name: pair[col] for name, pair in _OPS.items()}
    return KernelOps(backend=backend, **{name: _resolve(path) for name, path in paths.items()})


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
    if name not in _OPS:
        raise ValueError(f"unknown op {name!r}; available: {', '.join(sorted(_OPS))}")
    return getattr(get_ops(backend or backend_for(device)), name)


def _register_moe() -> None:
    """Make the fused MoE kernel selectable by name through moe_backend too."""
    from jevons.kernels.moe_backend import register_moe_backend

    register_moe_backend("triton", lambda: _ops("triton").fused_experts)


_register_moe()
