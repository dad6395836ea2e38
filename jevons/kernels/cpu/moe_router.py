"""A DeepSeek MoE router on the CPU (csrc/moe_router.c): the gate GEMV, V2's
softmax (greedy or group-limited) or V3's sigmoid + correction bias with
grouped top-k, and the gate weights, in one C call per layer instead of a
torch GEMM and ~10 routing ops.

Same signatures and results as kernels/torch_ref/moe_routing.py, which the
tests hold it to: the ids equal the reference's (ties toward the lower
index), the weights agree to float32 rounding. Each token's logits are a dot
product in one fixed order, so its experts do not depend on its batch.
Anything the kernel does not take (other dtypes, devices, shapes) goes to the
reference."""
from __future__ import annotations

import ctypes
import functools

import torch

from jevons.kernels.cpu.build import load
from jevons.kernels.cpu.ffi import F, I, L, P, kernel
from jevons.kernels.torch_ref import moe_routing as ref
from jevons.kernels.torch_ref.moe_routing import RouterConfig

_METHODS = {"greedy": 0, "group_limited_greedy": 1, "noaux_tc": 2}
_CFG = (I, I, I, I, I, I, I, F, P)  # e, k, sigmoid, method, n_group, topk_group, norm, scale, bias
_SELECT = (P, L, I, *_CFG, P, P, I)
_ROUTE = (P, L, P, I, I, *_CFG, P, P, P, I)


@functools.cache
def simd_path() -> str | None:
    """"avx2" (+FMA) or "scalar", or None without the library."""
    lib = load()
    if lib is None:
        return None
    fn = lib.jv_moe_router_simd
    fn.restype = ctypes.c_int
    return ("scalar", "avx2")[fn()]


@functools.cache
def _select_fn():
    lib = load()
    if lib is None:
        return None
    fn = lib.jv_moe_select
    fn.argtypes, fn.restype = list(_SELECT), ctypes.c_int
    return fn


@functools.cache
def _max_experts() -> int:
    lib = load()
    if lib is None:
        return 0
    fn = lib.jv_moe_router_max_experts
    fn.restype = ctypes.c_int
    return fn()


def _cfg_args(cfg: RouterConfig, bias: torch.Tensor | None) -> tuple | None:
    """The config as the C call's arguments, or None where the kernel does not
    take it (the reference handles it, or raises as it would)."""
    method = _METHODS.get(cfg.method)
    if (method is None or cfg.scoring not in ("softmax", "sigmoid") or not 0 < cfg.num_experts <= _max_experts()
            or not 0 < cfg.top_k <= cfg.num_experts or cfg.n_group < 1 or cfg.num_experts % cfg.n_group
            or not 0 < cfg.topk_group <= cfg.n_group):
        return None
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous() or bias.device.type != "cpu"):
        return None
    return (cfg.num_experts, cfg.top_k, int(cfg.scoring == "sigmoid"), method, cfg.n_group, cfg.topk_group,
            int(cfg.norm_topk_prob), cfg.routed_scaling_factor, bias.data_ptr() if bias is not None else None)


def select_experts(
    router_logits: torch.Tensor, cfg: RouterConfig, correction_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (weights [T, k] float32, ids [T, k] int64), as
    the reference."""
    fn = _select_fn()
    args = _cfg_args(cfg, correction_bias) if fn is not None else None
    lg = router_logits
    if (args is None or lg.device.type != "cpu" or lg.dim() != 2 or lg.shape[1] != cfg.num_experts
            or lg.dtype != torch.float32 or lg.stride(-1) != 1):
        return ref.select_experts(router_logits, cfg, correction_bias)
    t = lg.shape[0]
    ids = torch.empty(t, cfg.top_k, dtype=torch.int64)
    wts = torch.empty(t, cfg.top_k, dtype=torch.float32)
    if fn(lg.data_ptr(), lg.stride(0), t, *args, ids.data_ptr(), wts.data_ptr(), torch.get_num_threads()) != 0:
        return ref.select_experts(router_logits, cfg, correction_bias)
    return wts, ids


def route_experts(
    x: torch.Tensor, gate_weight: torch.Tensor, cfg: RouterConfig, correction_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, H], the gate's weight [E, H] (same dtype, float32 or bf16) ->
    (weights, ids) of select_experts on the logits x @ W^T in float32."""
    weights, ids, _ = route_with_logits(x, gate_weight, cfg, correction_bias)
    return weights, ids


def route_with_logits(
    x: torch.Tensor, gate_weight: torch.Tensor, cfg: RouterConfig, correction_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """route_experts, plus the float32 logits it routed (for the tests)."""
    fn = kernel("moe_route", x.dtype, _ROUTE, ctypes.c_int)
    args = _cfg_args(cfg, correction_bias) if fn is not None else None
    w = gate_weight
    h = x.shape[-1]
    if (args is None or x.device.type != "cpu" or x.dim() != 2 or x.stride(-1) != 1 or h % 8
            or w.dtype != x.dtype or w.device.type != "cpu" or tuple(w.shape) != (cfg.num_experts, h)
            or not w.is_contiguous()):
        logits = ref.gate_logits(x, gate_weight)
        return (*ref.select_experts(logits, cfg, correction_bias), logits)
    t = x.shape[0]
    logits = torch.empty(t, cfg.num_experts, dtype=torch.float32)
    ids = torch.empty(t, cfg.top_k, dtype=torch.int64)
    wts = torch.empty(t, cfg.top_k, dtype=torch.float32)
    rc = fn(x.data_ptr(), x.stride(0), w.data_ptr(), t, h, *args, logits.data_ptr(), ids.data_ptr(),
            wts.data_ptr(), torch.get_num_threads())
    if rc != 0:
        raise ValueError(f"moe_route rejected its arguments ({cfg})")
    return wts, ids, logits
