"""Fused RMSNorm, optionally with the residual add in the same pass.

rms_norm matches models.layers.norm.RMSNorm.forward: statistics in fp32, the
normalized value rounded to the input dtype, then times the weight (so a bf16
model rounds where the reference rounds). fused_add_rms_norm also returns
x + residual, reading and writing each row once instead of three times.
One program per row; a row (the hidden size) fits in one tile.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jevons.kernels.triton._common import pow2


@triton.jit
def _rms_kernel(
    x, res, w, out, res_out, stride_x, stride_r, stride_o, stride_ro, eps,
    N: tl.constexpr, BLOCK: tl.constexpr, HAS_RES: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    m = c < N
    v = tl.load(x + row * stride_x + c, mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        v = v + tl.load(res + row * stride_r + c, mask=m, other=0.0).to(tl.float32)
        v_io = v.to(res_out.dtype.element_ty)
        tl.store(res_out + row * stride_ro + c, v_io, mask=m)
        v = v_io.to(tl.float32)  # normalize the sum as stored, like the unfused path
    rstd = 1.0 / tl.sqrt(tl.sum(v * v, 0) / N + eps)
    normed = (v * rstd).to(x.dtype.element_ty).to(tl.float32)
    y = normed * tl.load(w + c, mask=m, other=0.0).to(tl.float32)
    tl.store(out + row * stride_o + c, y.to(out.dtype.element_ty), mask=m)


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows, n = x2.shape
    out = torch.empty(rows, n, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    if residual is not None:
        r2 = residual.reshape(-1, n)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        res_out = torch.empty_like(x2)
    else:
        r2 = res_out = x2  # unused
    if rows:
        _rms_kernel[(rows,)](
            x2, r2, weight, out, res_out, x2.stride(0), r2.stride(0), out.stride(0), res_out.stride(0), float(eps),
            N=n, BLOCK=pow2(n), HAS_RES=residual is not None, num_warps=4 if n <= 4096 else 8,
        )
    return out.view(shape), res_out.view(shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _launch(x, None, weight, eps)[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (rms_norm(x + residual), x + residual)."""
    return _launch(x, residual, weight, eps)
