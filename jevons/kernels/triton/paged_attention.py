"""Paged attention for MHA/GQA over the flat batch: decode rows and
prefill/extend spans, reading K/V through the block table.

Same contract as `torch_ref.paged_attention.paged_attention`; cache layout
[num_blocks, block_size, kv_heads, head_dim]. This step's K/V must already be
in the cache (write_kv runs first), so a fresh prefill and a chunk over a
cached prefix are one code path.

Decode (flash-decoding): one program per (decode row, KV head, split). The
query heads that share a KV head are packed into the M dimension of the dot,
so each K/V tile is loaded once for the whole group. Long contexts with few
rows are split along the keys and merged by a second small kernel; with one
split the first kernel writes the output itself.

Prefill: one program per (BLOCK_M query tile of one span, query head), causal
against context_start + its own position, online softmax in fp32.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.kernels.triton._common import dot_dtype, interpreting, num_sms, pow2

LOG2E = 1.4426950408889634
# A finite "minus infinity" for running maxima: rows that see no key at all
# (an empty split, a padded graph row) then give 0 * finite instead of NaN.
NEG_BIG: tl.constexpr = tl.constexpr(-1.0e30)


@triton.jit
def _decode_kernel(
    q, k_cache, v_cache, out, m_part, l_part, acc_part,
    block_tables, seq_lens, decode_seqs, decode_tokens,
    scale_log2,
    stride_qn, stride_qh, stride_on, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_bt,
    PAGE: tl.constexpr, G: tl.constexpr, BLOCK_G: tl.constexpr,
    D: tl.constexpr, BLOCK_D: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, DOT: tl.constexpr,
):
    i = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    row = tl.load(decode_seqs + i)
    tok = tl.load(decode_tokens + i)
    seq_len = tl.load(seq_lens + row).to(tl.int32)
    # Split boundaries are BLOCK_N-aligned so only the last tile is ragged.
    per_split = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)

    g = tl.arange(0, BLOCK_G)
    heads = kvh * G + g
    gmask = g < G
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    qv = tl.load(
        q + tok * stride_qn + heads[:, None] * stride_qh + d[None, :],
        mask=gmask[:, None] & (d[None, :] < D), other=0.0,
    ).to(DOT)

    m_i = tl.full([BLOCK_G], NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_DV], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        j = n0 + tl.arange(0, BLOCK_N)
        jm = j < end
        blk = tl.load(block_tables + row * stride_bt + j // PAGE, mask=jm, other=0).to(tl.int64)
        k_rows = blk * stride_kb + (j % PAGE) * stride_kt + kvh * stride_kh
        kt = tl.load(k_cache + k_rows[:, None] + d[None, :], mask=jm[:, None] & (d[None, :] < D), other=0.0)
        s = tl.dot(qv, tl.trans(kt.to(DOT))) * scale_log2
        s = tl.where(jm[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_rows = blk * stride_vb + (j % PAGE) * stride_vt + kvh * stride_vh
        vt = tl.load(v_cache + v_rows[:, None] + dv[None, :], mask=jm[:, None] & (dv[None, :] < DV), other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT), vt.to(DOT))
        m_i = m_new

    dmask = gmask[:, None] & (dv[None, :] < DV)
    if NUM_SPLITS == 1:
        o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_ptr = out + tok * stride_on + heads[:, None] * stride_oh + dv[None, :]
        tl.store(o_ptr, o.to(out.dtype.element_ty), mask=dmask)
    else:
        # Partials [Bd, Hq, S] and [Bd, Hq, S, DV], merged by _merge_kernel.
        base = (i * (G * tl.num_programs(1)) + heads) * NUM_SPLITS + split
        tl.store(m_part + base, m_i, mask=gmask)
        tl.store(l_part + base, l_i, mask=gmask)
        tl.store(acc_part + base[:, None] * DV + dv[None, :], acc, mask=dmask)


@triton.jit
def _merge_kernel(
    out, m_part, l_part, acc_part, decode_tokens,
    stride_on, stride_oh,
    HQ: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
    DV: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    i = tl.program_id(0)
    h = tl.program_id(1)
    tok = tl.load(decode_tokens + i)
    s = tl.arange(0, BLOCK_S)
    smask = s < NUM_SPLITS
    dv = tl.arange(0, BLOCK_DV)
    base = (i * HQ + h) * NUM_SPLITS + s
    m = tl.load(m_part + base, mask=smask, other=NEG_BIG)
    l = tl.load(l_part + base, mask=smask, other=0.0)
    a = tl.load(acc_part + base[:, None] * DV + dv[None, :], mask=smask[:, None] & (dv[None, :] < DV), other=0.0)
    w = tl.exp2(m - tl.max(m, 0))
    total = tl.sum(l * w, 0)
    o = tl.sum(a * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(out + tok * stride_on + h * stride_oh + dv, o.to(out.dtype.element_ty), mask=dv < DV)


@triton.jit
def _prefill_kernel(
    q, k_cache, v_cache, out, block_tables, tiles,
    scale_log2,
    stride_qn, stride_qh, stride_on, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_bt,
    PAGE: tl.constexpr, G: tl.constexpr,
    D: tl.constexpr, BLOCK_D: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr,
):
    t = tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // G
    # Tile plan row: (block-table row, first flat token, query length, cached context, tile offset).
    row = tl.load(tiles + t * 5)
    q0 = tl.load(tiles + t * 5 + 1)
    q_len = tl.load(tiles + t * 5 + 2)
    ctx = tl.load(tiles + t * 5 + 3)
    m0 = tl.load(tiles + t * 5 + 4)

    mi = m0 + tl.arange(0, BLOCK_M)
    mmask = mi < q_len
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    tok = (q0 + mi).to(tl.int64)
    qv = tl.load(
        q + tok[:, None] * stride_qn + h * stride_qh + d[None, :],
        mask=mmask[:, None] & (d[None, :] < D), other=0.0,
    ).to(DOT)
    qpos = ctx + mi
    # Keys up to the last query of this tile (causal), never past the chunk.
    kv_end = ctx + tl.minimum(m0 + BLOCK_M, q_len)

    m_i = tl.full([BLOCK_M], NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for n0 in range(0, kv_end, BLOCK_N):
        j = n0 + tl.arange(0, BLOCK_N)
        jm = j < kv_end
        blk = tl.load(block_tables + row * stride_bt + j // PAGE, mask=jm, other=0).to(tl.int64)
        k_rows = blk * stride_kb + (j % PAGE) * stride_kt + kvh * stride_kh
        kt = tl.load(k_cache + k_rows[:, None] + d[None, :], mask=jm[:, None] & (d[None, :] < D), other=0.0)
        s = tl.dot(qv, tl.trans(kt.to(DOT))) * scale_log2
        visible = jm[None, :] & (j[None, :] <= qpos[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_rows = blk * stride_vb + (j % PAGE) * stride_vt + kvh * stride_vh
        vt = tl.load(v_cache + v_rows[:, None] + dv[None, :], mask=jm[:, None] & (dv[None, :] < DV), other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT), vt.to(DOT))
        m_i = m_new

    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(
        out + tok[:, None] * stride_on + h * stride_oh + dv[None, :],
        o.to(out.dtype.element_ty), mask=mmask[:, None] & (dv[None, :] < DV),
    )


# The tile plan depends only on the step's metadata, which every layer shares:
# build it once per step (one host-to-device copy), not once per layer.
_plan_cache: dict[str, tuple[AttentionMetadata, int, torch.Tensor]] = {}


def prefill_tiles(meta: AttentionMetadata, block_m: int, device: torch.device) -> torch.Tensor:
    """[num_tiles, 5] int32: (row, first token, query length, context, tile offset)."""
    hit = _plan_cache.get("last")
    if hit is not None and hit[0] is meta and hit[1] == block_m and hit[2].device == device:
        return hit[2]
    rows = [
        (p.seq, p.start, p.end - p.start, p.context_start, m0)
        for p in meta.prefills
        for m0 in range(0, p.end - p.start, block_m)
    ]
    tiles = torch.tensor(rows, dtype=torch.int32).reshape(-1, 5).to(device)
    _plan_cache["last"] = (meta, block_m, tiles)
    return tiles


def decode_splits(num_rows: int, kv_heads: int, max_ctx: int, device: torch.device, min_chunk: int) -> int:
    """Key splits per decode row: enough programs to fill the GPU twice over,
    but no split shorter than min_chunk keys. A pure function of shapes, so a
    captured CUDA graph always sees the same value."""
    programs = max(num_rows * kv_heads, 1)
    want = math.ceil(2 * num_sms(device) / programs)
    return max(1, min(want, math.ceil(max(max_ctx, 1) / min_chunk), 32))


def _block_sizes() -> tuple[int, int, int]:
    """(prefill BLOCK_M, BLOCK_N, decode min keys per split)."""
    if interpreting():
        return 16, 16, 16  # every program is a Python loop there: keep them few and small
    return 64, 64, 256


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """q: [N, Hq, D]; k, v: this step's [N, Hkv, D], already in the cache.
    Returns [N, Hq, Dv]. num_splits overrides the decode split heuristic."""
    n, hq, d = q.shape
    hkv, dvs = k_cache.shape[2], v_cache.shape[-1]
    g = hq // hkv
    out = q.new_empty(n, hq, dvs)
    if q.stride(-1) != 1:
        q = q.contiguous()
    block_m, block_n, min_chunk = _block_sizes()
    common = dict(
        stride_kb=k_cache.stride(0), stride_kt=k_cache.stride(1), stride_kh=k_cache.stride(2),
        stride_vb=v_cache.stride(0), stride_vt=v_cache.stride(1), stride_vh=v_cache.stride(2),
        stride_bt=meta.block_tables.stride(0), PAGE=meta.block_size, G=g,
        D=d, BLOCK_D=pow2(d, 16), DV=dvs, BLOCK_DV=pow2(dvs, 16), BLOCK_N=block_n, DOT=dot_dtype(q.dtype),
    )
    scale_log2 = scale * LOG2E
    bd = int(meta.decode_seqs.shape[0])
    if bd:
        max_ctx = meta.block_tables.shape[1] * meta.block_size
        splits = num_splits or decode_splits(bd, hkv, max_ctx, q.device, min_chunk)
        if splits > 1:
            m_part = torch.empty(bd, hq, splits, dtype=torch.float32, device=q.device)
            l_part = torch.empty_like(m_part)
            acc_part = torch.empty(bd, hq, splits, dvs, dtype=torch.float32, device=q.device)
        else:
            m_part = l_part = acc_part = out  # unused when the kernel stores directly
        _decode_kernel[(bd, hkv, splits)](
            q, k_cache, v_cache, out, m_part, l_part, acc_part,
            meta.block_tables, meta.seq_lens, meta.decode_seqs, meta.decode_tokens,
            scale_log2, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            BLOCK_G=pow2(g, 16), NUM_SPLITS=splits, **common,
        )
        if splits > 1:
            _merge_kernel[(bd, hq)](
                out, m_part, l_part, acc_part, meta.decode_tokens, out.stride(0), out.stride(1),
                HQ=hq, NUM_SPLITS=splits, BLOCK_S=pow2(splits), DV=dvs, BLOCK_DV=pow2(dvs),
            )
    if meta.prefills:
        tiles = prefill_tiles(meta, block_m, q.device)
        _prefill_kernel[(tiles.shape[0], hq)](
            q, k_cache, v_cache, out, meta.block_tables, tiles,
            scale_log2, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            BLOCK_M=block_m, **common,
        )
    return out
