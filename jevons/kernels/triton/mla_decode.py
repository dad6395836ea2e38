"""MLA decode in the absorbed form, reading only the latent cache.

Same contract as `torch_ref.mla_attention.mla_attention`. Decode rows go
through three steps:
1. q_lat = q_nope @ W_UK per head (a batched GEMM, cuBLAS);
2. the kernel: for each decode row, a multi-query attention of all packed
   heads against the raw cache entries [c | k_rope] -> o_lat [Bd, H, R];
3. out = o_lat @ W_UV^T per head (a batched GEMM).

Head packing: a program owns BLOCK_H heads of one row, so each latent tile it
loads serves all of them (the score dot is [BLOCK_H, R] x [R, BLOCK_N] and the
value dot reuses the same tile as V). The head-group index is the fastest grid
axis, so the programs that share a tile run side by side and any re-read of
the tile is an L2 hit: HBM sees each latent block about once per row. Long
contexts are split along the keys (flash-decoding) and merged by
paged_attention's merge kernel.

Prefill spans use the reference's expanded form (GEMM-bound, SDPA on GPU).
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.kernels.torch_ref import mla_attention as ref
from jevons.kernels.triton._common import dot_dtype, interpreting, pow2
from jevons.kernels.triton.paged_attention import LOG2E, NEG_BIG, _merge_kernel, decode_splits


@triton.jit
def _mla_kernel(
    q_lat, q_rope, kv, out, m_part, l_part, acc_part,
    block_tables, seq_lens, decode_seqs, decode_tokens,
    scale_log2,
    stride_ql_b, stride_ql_h, stride_qr_n, stride_qr_h, stride_kv_slot, stride_bt,
    PAGE: tl.constexpr, H: tl.constexpr, BLOCK_H: tl.constexpr,
    R: tl.constexpr, BLOCK_R: tl.constexpr, DR: tl.constexpr, BLOCK_DR: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, DOT: tl.constexpr,
):
    hg = tl.program_id(0)
    i = tl.program_id(1)
    split = tl.program_id(2)
    row = tl.load(decode_seqs + i)
    tok = tl.load(decode_tokens + i)
    seq_len = tl.load(seq_lens + row).to(tl.int32)
    per_split = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)

    heads = hg * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = heads < H
    r = tl.arange(0, BLOCK_R)
    dr = tl.arange(0, BLOCK_DR)
    ql = tl.load(
        q_lat + i * stride_ql_b + heads[:, None] * stride_ql_h + r[None, :],
        mask=hmask[:, None] & (r[None, :] < R), other=0.0,
    ).to(DOT)
    qr = tl.load(
        q_rope + tok * stride_qr_n + heads[:, None] * stride_qr_h + dr[None, :],
        mask=hmask[:, None] & (dr[None, :] < DR), other=0.0,
    ).to(DOT)

    m_i = tl.full([BLOCK_H], NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        j = n0 + tl.arange(0, BLOCK_N)
        jm = j < end
        blk = tl.load(block_tables + row * stride_bt + j // PAGE, mask=jm, other=0).to(tl.int64)
        slot = (blk * PAGE + j % PAGE) * stride_kv_slot
        # The latent tile: loaded once, used as K (with the rope part) and as V.
        c = tl.load(kv + slot[:, None] + r[None, :], mask=jm[:, None] & (r[None, :] < R), other=0.0).to(DOT)
        kr = tl.load(kv + slot[:, None] + R + dr[None, :], mask=jm[:, None] & (dr[None, :] < DR), other=0.0).to(DOT)
        s = tl.dot(ql, tl.trans(c)) + tl.dot(qr, tl.trans(kr))
        s = tl.where(jm[None, :], s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT), c)
        m_i = m_new

    omask = hmask[:, None] & (r[None, :] < R)
    if NUM_SPLITS == 1:
        o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(out + (i * H + heads[:, None]) * R + r[None, :], o.to(out.dtype.element_ty), mask=omask)
    else:
        base = (i * H + heads) * NUM_SPLITS + split
        tl.store(m_part + base, m_i, mask=hmask)
        tl.store(l_part + base, l_i, mask=hmask)
        tl.store(acc_part + base[:, None] * R + r[None, :], acc, mask=omask)


def _sizes(h: int) -> tuple[int, int, int]:
    """(BLOCK_H, BLOCK_N, min keys per split). BLOCK_H >= 16 for tl.dot; 32
    keeps the [BLOCK_H, 512] fp32 accumulator in registers on Hopper (untuned:
    no GPU was lent when this was written, see docs/gpu.md)."""
    if interpreting():
        return pow2(h, 16), 16, 16
    return min(pow2(h, 16), 32), 32, 256


def mla_decode(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    w_kv_b: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Attention for the decode rows only. q_nope [N, H, Dn], q_rope [N, H, Dr]
    over the whole flat batch; returns [Bd, H, Dv] in decode-row order."""
    t = meta.decode_tokens
    bd, h, dn = int(t.shape[0]), q_nope.shape[1], q_nope.shape[2]
    r = w_kv_b.shape[-1]
    dr = kv_cache.shape[-1] - r
    # Step 1: fold W_UK into the query, heads as the batch of one bmm.
    q_lat = torch.bmm(q_nope[t].transpose(0, 1), w_kv_b[:, :dn]).transpose(0, 1)  # [Bd, H, R]
    if q_lat.stride(-1) != 1:
        q_lat = q_lat.contiguous()
    if q_rope.stride(-1) != 1:
        q_rope = q_rope.contiguous()
    flat = kv_cache.view(-1, kv_cache.shape[-1])
    block_h, block_n, min_chunk = _sizes(h)
    groups = triton.cdiv(h, block_h)
    max_ctx = meta.block_tables.shape[1] * meta.block_size
    splits = num_splits or decode_splits(bd, groups, max_ctx, q_nope.device, min_chunk)
    o_lat = q_nope.new_empty(bd, h, r)
    if splits > 1:
        m_part = torch.empty(bd, h, splits, dtype=torch.float32, device=q_nope.device)
        l_part = torch.empty_like(m_part)
        acc_part = torch.empty(bd, h, splits, r, dtype=torch.float32, device=q_nope.device)
    else:
        m_part = l_part = acc_part = o_lat
    _mla_kernel[(groups, bd, splits)](
        q_lat, q_rope, flat, o_lat, m_part, l_part, acc_part,
        meta.block_tables, meta.seq_lens, meta.decode_seqs, t,
        scale * LOG2E,
        q_lat.stride(0), q_lat.stride(1), q_rope.stride(0), q_rope.stride(1), flat.stride(0),
        meta.block_tables.stride(0),
        PAGE=meta.block_size, H=h, BLOCK_H=block_h, R=r, BLOCK_R=pow2(r, 16), DR=dr, BLOCK_DR=pow2(dr, 16),
        BLOCK_N=block_n, NUM_SPLITS=splits, DOT=dot_dtype(q_nope.dtype),
        # A [BLOCK_H, R] fp32 accumulator plus the query tile: 8 warps keep
        # them in registers at R = 512; two stages bound shared memory.
        num_warps=4 if interpreting() else 8, num_stages=2,
    )
    if splits > 1:
        rows = torch.arange(bd, device=q_nope.device)  # o_lat is indexed by decode row
        _merge_kernel[(bd, h)](
            o_lat, m_part, l_part, acc_part, rows, o_lat.stride(0), o_lat.stride(1),
            HQ=h, NUM_SPLITS=splits, BLOCK_S=pow2(splits), DV=r, BLOCK_DV=pow2(r),
        )
    # Step 3: unfold W_UV from the latent output.
    return torch.bmm(o_lat.transpose(0, 1), w_kv_b[:, dn:].transpose(1, 2)).transpose(0, 1)


def _prefill_only(meta: AttentionMetadata) -> AttentionMetadata:
    empty = meta.decode_seqs[:0]
    return dataclasses.replace(
        meta, decode_seqs=empty, decode_tokens=empty,
        decode_kv_slots=meta.decode_kv_slots[:0], decode_mask=meta.decode_mask[:0],
    )


def mla_attention(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    latent: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    w_kv_b: torch.Tensor,
    scale: float,
    decode_form: str = "absorbed",
    prefill_form: str = "expanded",
) -> torch.Tensor:
    """Drop-in for the reference: the Triton kernel for decode rows (always
    absorbed; decode_form is accepted for the shared signature), the
    reference's prefill_form for prefill spans."""
    if meta.prefills:
        out = ref.mla_attention(q_nope, q_rope, latent, kv_cache, _prefill_only(meta), w_kv_b, scale,
                                decode_form, prefill_form)
    else:
        out = q_nope.new_empty(q_nope.shape[0], q_nope.shape[1], w_kv_b.shape[1] - q_nope.shape[-1])
    if meta.decode_seqs.shape[0]:
        out[meta.decode_tokens] = mla_decode(q_nope, q_rope, kv_cache, meta, w_kv_b, scale)
    return out
