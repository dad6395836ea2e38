"""Block-scaled FP8 GEMM for DeepSeek's FP8 checkpoints, with a bf16 fallback.

Weights arrive as float8_e4m3fn [N, K] plus weight_scale_inv [ceil(N/bn),
ceil(K/bk)] (see kernels/torch_ref/fp8.py). Activations are quantized on the fly
per token and per group of bk columns (scale = amax / 448), so every K tile of
the GEMM has one scale per row and one per weight block:

    C[m, n] = sum_kb (A_q[m, kb] . W_q[n, kb]) * a_scale[m, kb] * w_scale[n // bn, kb]

The dot runs on FP8 tensor cores (Hopper, sm_89+) with fp32 accumulation; the
scales are applied per K tile in fp32. Elsewhere fp8_linear falls back to
dequantizing the weight to the activation dtype and calling F.linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from jevons.kernels.triton._common import interpreting, pow2
from jevons.kernels.torch_ref.fp8 import DEFAULT_BLOCK, dequant_block_fp8

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def fp8_supported(device: torch.device) -> bool:
    """FP8 tensor cores: compute capability 8.9 (Ada) or 9.0+ (Hopper). The
    interpreter emulates FP8 dots, so tests cover the kernel path on CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return interpreting()


@triton.jit
def _quant_kernel(x, xq, scale, stride_x, stride_q, K: tl.constexpr, GROUP: tl.constexpr, NUM_GROUPS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    grp = tl.program_id(1)
    c = grp * GROUP + tl.arange(0, GROUP)
    m = c < K
    v = tl.load(x + row * stride_x + c, mask=m, other=0.0).to(tl.float32)
    s = tl.maximum(tl.max(tl.abs(v), 0), 1e-10) / 448.0
    q = tl.clamp(v / s, -448.0, 448.0)
    tl.store(xq + row * stride_q + c, q.to(xq.dtype.element_ty), mask=m)
    tl.store(scale + row * NUM_GROUPS + grp, s)


def quant_fp8_groups(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (float8_e4m3fn [M, K], fp32 scales [M, ceil(K/group)]), x ~= q * scale."""
    m, k = x.shape
    groups = triton.cdiv(k, group)
    xq = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(m, groups, dtype=torch.float32, device=x.device)
    if m:
        _quant_kernel[(m, groups)](x, xq, scale, x.stride(0), xq.stride(0), K=k, GROUP=group, NUM_GROUPS=groups)
    return xq, scale


@triton.jit
def _gemm_kernel(
    a, a_scale, w, w_scale, c, M, stride_am, stride_wn, stride_cm,
    N: tl.constexpr, K: tl.constexpr, BN_SCALE: tl.constexpr, K_GROUPS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mm = rm < M
    nm = rn < N
    a_ptr = a + rm.to(tl.int64)[:, None] * stride_am + rk[None, :]
    w_ptr = w + rn.to(tl.int64)[None, :] * stride_wn + rk[:, None]
    # BLOCK_N divides the weight's scale block, so one weight scale per K tile.
    ws_row = w_scale + ((pn * BLOCK_N) // BN_SCALE) * K_GROUPS
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for kb in range(0, K_GROUPS):
        km = (kb * BLOCK_K + rk) < K
        at = tl.load(a_ptr + kb * BLOCK_K, mask=mm[:, None] & km[None, :], other=0.0)
        wt = tl.load(w_ptr + kb * BLOCK_K, mask=km[:, None] & nm[None, :], other=0.0)
        sa = tl.load(a_scale + rm * K_GROUPS + kb, mask=mm, other=0.0)
        sw = tl.load(ws_row + kb)
        acc += tl.dot(at, wt) * (sa[:, None] * sw)
    tl.store(c + rm.to(tl.int64)[:, None] * stride_cm + rn[None, :], acc.to(c.dtype.element_ty),
             mask=mm[:, None] & nm[None, :])


def fp8_block_gemm(
    a_q: torch.Tensor, a_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
    block: tuple[int, int], out_dtype: torch.dtype,
) -> torch.Tensor:
    """a_q [M, K] fp8 with a_scale [M, ceil(K/bk)]; w_q [N, K] fp8 with
    w_scale [ceil(N/bn), ceil(K/bk)] -> [M, N] in out_dtype."""
    m, k = a_q.shape
    n = w_q.shape[0]
    bn, bk = block
    assert bk == pow2(bk) and bn == pow2(bn), "scale blocks must be powers of two"
    block_m = 16 if interpreting() or m <= 16 else 64
    block_n = min(bn, 16 if interpreting() else 128)
    out = torch.empty(m, n, dtype=out_dtype, device=a_q.device)
    if m:
        _gemm_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n))](
            a_q, a_scale, w_q, w_scale.to(torch.float32).contiguous(), out, m,
            a_q.stride(0), w_q.stride(0), out.stride(0),
            N=n, K=k, BN_SCALE=bn, K_GROUPS=triton.cdiv(k, bk),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=bk,
        )
    return out


def fp8_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale_inv: torch.Tensor,
    block: tuple[int, int] = DEFAULT_BLOCK,
    bias: torch.Tensor | None = None,
    fallback: bool | None = None,
) -> torch.Tensor:
    """y = x @ W^T for a block-scaled FP8 weight. fallback=None picks the FP8
    kernel where fp8_supported, else dequantizes W to x.dtype (bf16) first."""
    use_fallback = not fp8_supported(x.device) if fallback is None else fallback
    if use_fallback:
        return F.linear(x, dequant_block_fp8(w_q, w_scale_inv, block).to(x.dtype), bias)
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    xq, xs = quant_fp8_groups(x2, block[1])
    y = fp8_block_gemm(xq, xs, w_q, w_scale_inv, block, x.dtype)
    if bias is not None:
        y = y + bias
    return y.view(*shape[:-1], w_q.shape[0])
