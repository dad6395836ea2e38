"""Rotary embedding (rotate-half layout) for q and k in one launch.

Same contract as `kernels.torch_ref.rotary.apply_rotary(q, k, cos, sin)`: q
[N, Hq, D], k [N, Hk, D], cos/sin [N, 1, D] (the rows RotaryEmbedding.lookup
gathered once per forward). One program per token rotates all of its query
and key heads: the token's cos/sin row is loaded once and stays in registers.
The math is fp32 with one rounding at the store.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jevons.kernels.triton._common import pow2


@triton.jit
def _rotate(src, dst, stride_sn, stride_sh, stride_dn, stride_dh, n, c1, s1, c2, s2,
            HEADS: tl.constexpr, BLOCK_H: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    h = tl.arange(0, BLOCK_H)
    j = tl.arange(0, BLOCK_HALF)
    m = (h[:, None] < HEADS) & (j[None, :] < HALF)
    base = src + n * stride_sn + h[:, None] * stride_sh + j[None, :]
    x1 = tl.load(base, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=m, other=0.0).to(tl.float32)
    # rotate_half(x) = [-x2, x1]
    o1 = x1 * c1[None, :] - x2 * s1[None, :]
    o2 = x2 * c2[None, :] + x1 * s2[None, :]
    out = dst + n * stride_dn + h[:, None] * stride_dh + j[None, :]
    tl.store(out, o1.to(dst.dtype.element_ty), mask=m)
    tl.store(out + HALF, o2.to(dst.dtype.element_ty), mask=m)


@triton.jit
def _rope_kernel(
    q, k, q_out, k_out, cos, sin,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_qon, stride_qoh, stride_kon, stride_koh, stride_cn,
    HQ: tl.constexpr, BLOCK_HQ: tl.constexpr, HK: tl.constexpr, BLOCK_HK: tl.constexpr,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK_HALF)
    jm = j < HALF
    c1 = tl.load(cos + n * stride_cn + j, mask=jm, other=0.0).to(tl.float32)
    c2 = tl.load(cos + n * stride_cn + HALF + j, mask=jm, other=0.0).to(tl.float32)
    s1 = tl.load(sin + n * stride_cn + j, mask=jm, other=0.0).to(tl.float32)
    s2 = tl.load(sin + n * stride_cn + HALF + j, mask=jm, other=0.0).to(tl.float32)
    _rotate(q, q_out, stride_qn, stride_qh, stride_qon, stride_qoh, n, c1, s1, c2, s2, HQ, BLOCK_HQ, HALF, BLOCK_HALF)
    _rotate(k, k_out, stride_kn, stride_kh, stride_kon, stride_koh, n, c1, s1, c2, s2, HK, BLOCK_HK, HALF, BLOCK_HALF)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    n, hq, d = q.shape
    hk = k.shape[1]
    q_out = torch.empty_like(q, memory_format=torch.contiguous_format)
    k_out = torch.empty_like(k, memory_format=torch.contiguous_format)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    cos2 = cos.reshape(-1, d).contiguous()
    sin2 = sin.reshape(-1, d).contiguous()
    # cos/sin [N, 1, D]; a single row [1, 1, D] broadcasts over all tokens.
    stride_cn = 0 if cos2.shape[0] == 1 else cos2.stride(0)
    if n:
        half = d // 2
        _rope_kernel[(n,)](
            q, k, q_out, k_out, cos2, sin2,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1), stride_cn,
            HQ=hq, BLOCK_HQ=pow2(hq), HK=hk, BLOCK_HK=pow2(hk), HALF=half, BLOCK_HALF=pow2(half),
        )
    return q_out, k_out
