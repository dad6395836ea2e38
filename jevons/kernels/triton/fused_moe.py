"""Fused MoE: token-sorted grouped GEMM with SiLU-and-multiply fused, and the
routing top-k.

Same contract as `torch_ref.moe.fused_experts` (x [T, H], w13 [E, 2I, H],
w2 [E, H, I], topk_weights [T, k] float32, topk_ids [T, k]) -> [T, H].

1. align: the T*k (token, expert) assignments are sorted by expert and each
   expert's run is padded to a multiple of BLOCK_M, so every M tile belongs to
   exactly one expert. Done with a few vectorized torch ops and an upper bound
   on the padded length, so there is no host sync (CUDA-graph safe); tiles past
   the real end are marked expert -1 and exit at once.
2. gate/up kernel: one program per (M tile, N tile of I) computes the gate and
   up GEMMs side by side from the same x tile, applies silu(gate) * up in fp32
   and writes the activation once: the [T*k, 2I] intermediate never exists.
3. down kernel: the activation tile times w2[e]^T, scaled by the routing weight
   in fp32, written per assignment; the k assignments of a token are summed in
   fp32 (a deterministic reduction, no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jevons.kernels.triton._common import dot_dtype, interpreting


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (sorted_ids [P] int32: flat assignment index or T*k for padding,
    tile_expert [P / block_m] int32: the tile's expert or -1 past the end)."""
    flat = topk_ids.reshape(-1).to(torch.int64)
    tk = flat.numel()
    device = flat.device
    # Only experts that got a token add padding: at most min(E, T*k) of them.
    cap = triton.cdiv(tk + min(num_experts, tk) * (block_m - 1), block_m) * block_m
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    pad_end = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)
    e_sorted = flat[order]
    rank = torch.arange(tk, device=device) - (torch.cumsum(counts, 0) - counts)[e_sorted]
    dest = (pad_end - padded)[e_sorted] + rank
    sorted_ids = torch.full((cap,), tk, dtype=torch.int32, device=device)
    sorted_ids[dest] = order.to(torch.int32)
    tile_start = torch.arange(0, cap, block_m, device=device)
    tile_expert = torch.searchsorted(pad_end, tile_start, right=True)
    tile_expert = torch.where(tile_start < pad_end[-1], tile_expert, -1).to(torch.int32)
    return sorted_ids, tile_expert


@triton.jit
def _gate_up_kernel(
    x, w13, act, sorted_ids, tile_expert,
    stride_xt, stride_we, stride_wn, stride_an,
    TK, TOPK: tl.constexpr, H: tl.constexpr, I: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
):
    tile = tl.program_id(0)
    nb = tl.program_id(1)
    e = tl.load(tile_expert + tile).to(tl.int64)
    if e < 0:
        return
    ids = tl.load(sorted_ids + tile * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = ids < TK
    tok = (ids // TOPK).to(tl.int64)
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < I
    kk = tl.arange(0, BLOCK_K)
    w_gate = w13 + e * stride_we + n[None, :] * stride_wn + kk[:, None]
    w_up = w_gate + I * stride_wn
    x_ptr = x + tok[:, None] * stride_xt + kk[None, :]
    gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        km = (k0 + kk) < H
        a = tl.load(x_ptr + k0, mask=valid[:, None] & km[None, :], other=0.0).to(DOT)
        wm = km[:, None] & nmask[None, :]
        gate += tl.dot(a, tl.load(w_gate + k0, mask=wm, other=0.0).to(DOT))
        up += tl.dot(a, tl.load(w_up + k0, mask=wm, other=0.0).to(DOT))
    h = gate * tl.sigmoid(gate) * up
    tl.store(
        act + ids.to(tl.int64)[:, None] * stride_an + n[None, :], h.to(act.dtype.element_ty),
        mask=valid[:, None] & nmask[None, :],
    )


@triton.jit
def _down_kernel(
    act, w2, out, topk_weights, sorted_ids, tile_expert,
    stride_an, stride_we, stride_wn, stride_on,
    TK, H: tl.constexpr, I: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
):
    tile = tl.program_id(0)
    nb = tl.program_id(1)
    e = tl.load(tile_expert + tile).to(tl.int64)
    if e < 0:
        return
    ids = tl.load(sorted_ids + tile * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = ids < TK
    rows = ids.to(tl.int64)
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < H
    kk = tl.arange(0, BLOCK_K)
    a_ptr = act + rows[:, None] * stride_an + kk[None, :]
    w_ptr = w2 + e * stride_we + n[None, :] * stride_wn + kk[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, I, BLOCK_K):
        km = (k0 + kk) < I
        a = tl.load(a_ptr + k0, mask=valid[:, None] & km[None, :], other=0.0).to(DOT)
        w = tl.load(w_ptr + k0, mask=km[:, None] & nmask[None, :], other=0.0).to(DOT)
        acc += tl.dot(a, w)
    gate_w = tl.load(topk_weights + rows, mask=valid, other=0.0)
    acc = acc * gate_w[:, None]
    tl.store(
        out + rows[:, None] * stride_on + n[None, :], acc.to(out.dtype.element_ty),
        mask=valid[:, None] & nmask[None, :],
    )


def _tiles(tk: int, num_experts: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps). Small M tiles when each expert
    sees few rows (decode), so padding does not multiply the work."""
    if interpreting():
        return 16, 16, 16, 4
    per_expert = tk / max(num_experts, 1)
    block_m = 16 if per_expert <= 16 else 32 if per_expert <= 64 else 64
    return block_m, 128, 64, 4 if block_m < 64 else 8


def fused_experts(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    t, k = topk_ids.shape
    num_experts, two_i, hidden = w13.shape
    inter = two_i // 2
    tk = t * k
    if tk == 0:
        return x.new_zeros(t, hidden)
    x = x.contiguous()
    w13 = w13.contiguous()
    w2 = w2.contiguous()
    bm, bn, bk, warps = _tiles(tk, num_experts)
    sorted_ids, tile_expert = moe_align(topk_ids, num_experts, bm)
    n_tiles = tile_expert.shape[0]
    dot = dot_dtype(x.dtype)
    act = x.new_empty(tk, inter)
    _gate_up_kernel[(n_tiles, triton.cdiv(inter, bn))](
        x, w13, act, sorted_ids, tile_expert,
        x.stride(0), w13.stride(0), w13.stride(1), act.stride(0),
        tk, TOPK=k, H=hidden, I=inter, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT=dot, num_warps=warps,
    )
    out_k = x.new_empty(tk, hidden)
    weights = topk_weights.reshape(-1).to(torch.float32).contiguous()
    _down_kernel[(n_tiles, triton.cdiv(hidden, bn))](
        act, w2, out_k, weights, sorted_ids, tile_expert,
        act.stride(0), w2.stride(0), w2.stride(1), out_k.stride(0),
        tk, H=hidden, I=inter, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT=dot, num_warps=warps,
    )
    if k == 1:
        return out_k
    return out_k.view(t, k, hidden).sum(1, dtype=torch.float32).to(x.dtype)
