"""RMSNorm (with and without the residual add), rotary, KV-cache writes and
SiLU-and-mul on the CPU through csrc/elementwise.c: one C call each instead of
4 to 12 eager ops. Same signatures and results as the torch references (tested
in tests/test_cpu_kernels.py); anything the C side does not cover (mixed
dtypes, odd strides) goes to the reference."""
from __future__ import annotations

import torch

from jevons.kernels.cpu.ffi import F, I, L, P, kernel
from jevons.kernels.torch_ref import elementwise as ew_ref
from jevons.kernels.torch_ref import paged_attention as attn_ref
from jevons.kernels.torch_ref import rotary as rotary_ref

_NORM = (P, L, P, L, P, P, P, L, I, F, I)
_ROTARY = (P, L, L, P, L, L, P, P, P, P, L, I, I, I, I)
_WRITE_KV = (P, L, L, P, L, L, P, P, P, L, I, I)
_SILU = (P, L, P, L, I, I)


def _rows(x: torch.Tensor) -> torch.Tensor | None:
    """x as [rows, dim] with unit inner stride, or None."""
    x2 = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    return x2 if x2.stride(-1) == 1 else None


def _norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    fn = kernel("add_rms_norm", x.dtype, _NORM)
    x2 = _rows(x)
    r2 = _rows(residual) if residual is not None else None
    if fn is None or x2 is None or weight.dtype != x.dtype or not weight.is_contiguous() or (
        residual is not None and (r2 is None or residual.dtype != x.dtype or residual.shape != x.shape)
    ):
        return None
    # empty_like: a third of torch.empty(shape, dtype=...)'s cost, which shows
    # at decode sizes where this whole call is ~10 us.
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    total = torch.empty_like(out) if residual is not None else None
    fn(x2.data_ptr(), x2.stride(0), r2.data_ptr() if r2 is not None else None, r2.stride(0) if r2 is not None else 0,
       weight.data_ptr(), out.data_ptr(), total.data_ptr() if total is not None else None,
       x2.shape[0], x2.shape[1], eps, torch.get_num_threads())
    return out, total


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    done = _norm(x, None, weight, eps)
    return ew_ref.torch_rms_norm(x, weight, eps) if done is None else done[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    done = _norm(x, residual, weight, eps)
    return ew_ref.torch_add_rms_norm(x, residual, weight, eps) if done is None else done


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [N, Hq, D], k: [N, Hk, D] (views of the fused QKV output are fine);
    cos/sin: [N, 1, D] in q's dtype."""
    fn = kernel("rotary", q.dtype, _ROTARY)
    n, hq, d = q.shape
    if (
        fn is None or k.dtype != q.dtype or cos.dtype != q.dtype or sin.dtype != q.dtype
        or q.stride(-1) != 1 or k.stride(-1) != 1 or cos.numel() != n * d or sin.numel() != n * d
    ):
        return rotary_ref.apply_rotary(q, k, cos, sin)
    cos2, sin2 = cos.reshape(n, d).contiguous(), sin.reshape(n, d).contiguous()
    q_out = torch.empty(n, hq, d, dtype=q.dtype)  # positional sizes: cheaper than a shape tuple
    k_out = torch.empty(n, k.shape[1], d, dtype=q.dtype)
    fn(q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), k.stride(0), k.stride(1),
       cos2.data_ptr(), sin2.data_ptr(), q_out.data_ptr(), k_out.data_ptr(), n, hq, k.shape[1], d,
       torch.get_num_threads())
    return q_out, k_out


def write_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    fn = kernel("write_kv", k_cache.dtype, _WRITE_KV)
    if (
        fn is None or k.dtype != k_cache.dtype or v.dtype != v_cache.dtype or v_cache.dtype != k_cache.dtype
        or not (k_cache.is_contiguous() and v_cache.is_contiguous()) or k.stride(-1) != 1 or v.stride(-1) != 1
        or k.shape[-1] != v.shape[-1] or slot_mapping.dtype != torch.int64 or not slot_mapping.is_contiguous()
    ):
        attn_ref.write_kv(k_cache, v_cache, k, v, slot_mapping)
        return
    n, hkv, d = k.shape
    fn(k.data_ptr(), k.stride(0), k.stride(1), v.data_ptr(), v.stride(0), v.stride(1),
       k_cache.data_ptr(), v_cache.data_ptr(), slot_mapping.data_ptr(), n, hkv, d)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """[..., 2I] -> silu(x[..., :I]) * x[..., I:]."""
    fn = kernel("silu_and_mul", x.dtype, _SILU)
    x2 = _rows(x)
    if fn is None or x2 is None:
        return ew_ref.torch_silu_and_mul(x)
    inter = x.shape[-1] // 2
    out = torch.empty(*x.shape[:-1], inter, dtype=x.dtype)
    fn(x2.data_ptr(), x2.stride(0), out.data_ptr(), x2.shape[0], inter, torch.get_num_threads())
    return out
