"""Plain-torch DeepSeek Sparse Attention (V3.2) over a paged cache: the
lightning indexer's score and top-k selection, then MLA over only the
selected cache entries. The reference for faster kernels, and the CPU path.

Two per-token caches per layer, both indexed by the same slots (so one block
table, one block id, serves both):
- the MLA latent cache [num_blocks, block_size, R + Dr] (mla_attention.py),
- the indexer key cache [num_blocks, block_size, Di]: each token's
  normalized, rotated indexer key.

Score of query t against cached token s (transformers' DeepseekV32Indexer):
    I[t, s] = sum_h w[t, h] * relu(scale * q[t, h] . k[s])
where w already carries the 1/sqrt(heads) factor. Each query then attends to
the `topk` causal tokens of highest score. When a query sees no more than
`topk` tokens, all of them are selected, so scoring is skipped and attention
is the exact dense MLA ("dense fallback").

Ties: equal scores at the top-k boundary are taken in index order, so the
selection is a pure function of the scores, independent of batch layout
(torch.topk alone leaves tie order unspecified).
"""
from __future__ import annotations

from typing import Callable

import torch

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.kernels.torch_ref import index_keys
from jevons.kernels.torch_ref.index_keys import FP8Keys
from jevons.kernels.torch_ref.mla_attention import FORMS, MLAForm
from jevons.kernels.torch_ref.moe_routing import stable_topk

# Rows of a sparse prefill gathered at once in the absorbed form: bounds the
# [rows, topk, R + Dr] gather.
GATHER_ROWS = 256
# Query rows and indexer heads scored at once: bounds the [rows, heads, L]
# float32 intermediate (128 x 16 x 16K tokens = 128 MiB) for long prompts.
SCORE_ROWS, SCORE_HEADS = 128, 16


def write_index_keys(
    key_cache: torch.Tensor, keys: torch.Tensor, slot_mapping: torch.Tensor, fp8: FP8Keys | None = None
) -> None:
    """Scatter this step's [N, Di] indexer keys into their cache slots (as
    e4m3 + block scales when `fp8` says so: index_keys.py)."""
    if fp8 is not None:
        index_keys.write(key_cache, keys, slot_mapping, fp8)
        return
    key_cache.view(-1, key_cache.shape[-1]).index_copy_(0, slot_mapping, keys.to(key_cache.dtype))


def read_index_keys(key_cache: torch.Tensor, slots: torch.Tensor, fp8: FP8Keys | None = None) -> torch.Tensor:
    """The cached indexer keys at `slots` (any shape): [*slots.shape, Di],
    dequantized to float32 when stored in FP8."""
    if fp8 is not None:
        return index_keys.read(key_cache, slots, fp8)
    return key_cache.view(-1, key_cache.shape[-1])[slots]


def index_scores(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """q [B, Q, H, Di], w [B, Q, H], keys [B, L, Di] -> float32 scores [B, Q, L].
    Computed in float32 in transformers' order (dot, scale, relu, weighted
    sum over heads), SCORE_ROWS queries and SCORE_HEADS heads at a time."""
    b, nq, h, _ = q.shape
    keys = keys.float()
    out = q.new_zeros(b, nq, keys.shape[1], dtype=torch.float32)
    for r in range(0, nq, SCORE_ROWS):
        rows = slice(r, r + SCORE_ROWS)
        for c in range(0, h, SCORE_HEADS):
            heads = slice(c, c + SCORE_HEADS)
            s = torch.einsum("bqhd,bld->bqhl", q[:, rows, heads].float(), keys) * scale
            out[:, rows] += torch.einsum("bqh,bqhl->bql", w[:, rows, heads].float(), s.relu())
    return out


def index_scores_decode(
    q: torch.Tensor, w: torch.Tensor, key_cache: torch.Tensor, block_tables: torch.Tensor, lens: torch.Tensor,
    scale: float, fp8: FP8Keys | None = None,
) -> torch.Tensor:
    """Decode rows' scores against every cached key they may see: q [B, Hi,
    Di], w [B, Hi]; block_tables [B, W] (row b: decode row b's table), lens
    [B]. Returns float32 [B, max(lens)] (past lens[b]: whatever the table's
    padding points at; the caller masks it). The reference for
    kernels/cpu/dsa_index.py (the KernelOps op `index_scores_decode`)."""
    bs = key_cache.shape[1]
    j = torch.arange(int(lens.max()), device=q.device)
    slots = block_tables[:, j // bs] * bs + j % bs
    return index_scores(q[:, None], w[:, None], read_index_keys(key_cache, slots, fp8), scale)[:, 0]


def topk_mask(scores: torch.Tensor, topk: int) -> torch.Tensor:
    """Exactly `topk` True per row [..., L]: every score above the k-th
    largest, then ties with it in index order. The same set a stable
    descending sort picks, at the cost of a top-k and a cumsum instead of a
    full sort (the sort was a third of a long-context decode step)."""
    kth = torch.topk(scores, topk, dim=-1).values[..., -1:]
    above = scores > kth
    tie = scores == kth
    return above | (tie & (tie.cumsum(-1) <= topk - above.sum(-1, keepdim=True)))


def select_topk(scores: torch.Tensor, visible: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `topk` visible keys of highest score per query, in index order:
    (indices [..., k], whether each chosen key is visible [..., k]; False
    only where a query sees fewer than topk keys)."""
    mask = topk_mask(scores.masked_fill(~visible, float("-inf")), topk)
    idx = mask.nonzero()[:, -1].view(*scores.shape[:-1], topk)
    return idx, visible.gather(-1, idx)


def selected_mask(scores: torch.Tensor, visible: torch.Tensor, topk: int) -> torch.Tensor:
    """`visible` narrowed to each query's top-k keys (the dense-mask form)."""
    if scores.shape[-1] <= topk:
        return visible
    idx, ok = select_topk(scores, visible, topk)
    return torch.zeros_like(visible).scatter_(-1, idx, ok)


def _decode_rows(
    form: MLAForm, q_nope: torch.Tensor, q_rope: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
    positions: torch.Tensor | None, lens: torch.Tensor, w_kv_b: torch.Tensor, scale: float,
) -> torch.Tensor:
    """Each decode row over the first lens[b] of its positions (or over
    0 .. lens[b] - 1 when positions is None), gathered through its table."""
    bs = kv_cache.shape[1]
    if positions is None:
        positions = torch.arange(int(lens.max()), device=q_nope.device)[None].expand(len(lens), -1)
    slots = block_tables.gather(1, positions // bs) * bs + positions % bs
    mask = torch.arange(positions.shape[1], device=q_nope.device)[None] < lens[:, None]
    kv = kv_cache.view(-1, kv_cache.shape[-1])[slots].to(q_nope.dtype)  # [B, k, R + Dr]
    return form(q_nope[:, None], q_rope[:, None], kv, mask[:, None], w_kv_b, scale)[:, 0]


def kv_b_weight(w_kv_b: torch.Tensor, w_scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """kv_b_proj's weight [H, Dn + Dv, R] in `dtype`: as given, or int8 rows
    times their float32 scales w_scale [H, Dn + Dv] (models/layers/
    mla_kv_b.py), the product taken in float32 and rounded once."""
    if w_scale is None:
        return w_kv_b
    return (w_kv_b.float() * w_scale[..., None]).to(dtype)


def sparse_mla_decode(
    q_nope: torch.Tensor, q_rope: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
    positions: torch.Tensor | None, lens: torch.Tensor, w_kv_b: torch.Tensor, scale: float,
    w_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Absorbed MLA decode over selected cache entries: the reference for
    kernels/cpu/sparse_mla.py (the KernelOps op `sparse_mla_decode`).
    q_nope [B, H, Dn], q_rope [B, H, Dr]; kv_cache [blocks, block_size,
    R + Dr]; block_tables [B, W] (row b: decode row b's table); positions
    [B, k] int64, index-ordered, of which row b attends to the first lens[b];
    or None: row b attends to positions 0 .. lens[b] - 1 (dense); w_kv_b
    [H, Dn + Dv, R], or int8 rows with their scales w_scale [H, Dn + Dv]
    (dequantized here: kv_b_weight). Returns [B, H, Dv]."""
    w = kv_b_weight(w_kv_b, w_scale, q_nope.dtype)
    return _decode_rows(FORMS["absorbed"], q_nope, q_rope, kv_cache, block_tables, positions, lens, w, scale)


# (q_nope, q_rope, kv_cache, block_tables, positions, lens, w_kv_b, scale) -> [B, H, Dv]
SparseDecode = Callable[..., torch.Tensor]
# (q, w, key_cache, block_tables, lens, scale, fp8) -> [B, max(lens)]
DecodeScores = Callable[..., torch.Tensor]


def _context_slots(meta: AttentionMetadata, seq: int, total: int, device: torch.device) -> torch.Tensor:
    j = torch.arange(total, device=device)
    table = meta.block_tables[seq]
    return table[j // meta.block_size] * meta.block_size + j % meta.block_size


def sparse_mla_attention(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    kv_cache: torch.Tensor,
    index_q: torch.Tensor,
    index_w: torch.Tensor,
    key_cache: torch.Tensor,
    meta: AttentionMetadata,
    w_kv_b: torch.Tensor,
    scale: float,
    index_scale: float,
    topk: int,
    decode_form: str = "absorbed",
    prefill_form: str = "expanded",
    decode: SparseDecode = sparse_mla_decode,
    key_fp8: FP8Keys | None = None,
    decode_scores: DecodeScores = index_scores_decode,
    w_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """q_nope [N, H, Dn], q_rope [N, H, Dr] (rotated); index_q [N, Hi, Di]
    (rotated), index_w [N, Hi]. This step's latents and indexer keys must
    already be in kv_cache / key_cache. Returns [N, H, Dv].

    Decode rows are scored through `decode_scores` (a backend's
    index_scores_decode) and attend over their selected entries alone:
    through `decode` (a backend's sparse_mla_decode) in the absorbed form,
    else gathered.
    Prefill spans: "expanded" expands the span's context once and masks each
    query to its selection; "absorbed" gathers each query's selected latents
    and attends over them in latent space (what sparse kernels do). `key_fp8`:
    the indexer keys are cached in FP8 (index_keys.py), dequantized here.
    `w_scale`: w_kv_b is int8 with these row scales (kv_b_weight); `decode`
    reads it as it is, every other form gets it dequantized, once a call."""
    n, h, _ = q_nope.shape
    out = q_nope.new_empty(n, h, w_kv_b.shape[1] - q_nope.shape[-1])
    w_stored, w_kv_b = w_kv_b, (w_kv_b if w_scale is None or (not meta.prefills and decode_form == "absorbed")
                               else kv_b_weight(w_kv_b, w_scale, q_nope.dtype))
    flat = kv_cache.view(-1, kv_cache.shape[-1])
    if len(meta.decode_seqs):
        t = meta.decode_tokens
        tables, lens = meta.block_tables[meta.decode_seqs], meta.seq_lens[meta.decode_seqs]
        positions = None  # the dense fallback: every visible token
        if meta.decode_kv_slots.shape[1] > topk:
            scores = decode_scores(index_q[t], index_w[t], key_cache, tables, lens, index_scale, key_fp8)
            # Index order puts a row's visible picks first (it sees a prefix of the positions).
            positions, visible = select_topk(scores, meta.decode_mask[:, 0, 0], topk)
            lens = visible.sum(1)
        if decode_form == "absorbed":
            out[t] = decode(q_nope[t], q_rope[t], kv_cache, tables, positions, lens, w_stored, scale,
                            w_scale=w_scale)
        else:
            out[t] = _decode_rows(FORMS[decode_form], q_nope[t], q_rope[t], kv_cache, tables, positions, lens,
                                  w_kv_b, scale)
    for span in meta.prefills:
        rows = slice(span.start, span.end)
        q_len = span.end - span.start
        total = span.context_start + q_len
        slots = _context_slots(meta, span.seq, total, q_nope.device)
        qpos = span.context_start + torch.arange(q_len, device=q_nope.device)
        causal = torch.arange(total, device=q_nope.device)[None, :] <= qpos[:, None]  # [Q, L]
        if total <= topk:  # every query sees at most topk tokens: dense MLA, no scoring
            mask = causal
        else:
            keys = read_index_keys(key_cache, slots, key_fp8)[None]
            scores = index_scores(index_q[rows][None], index_w[rows][None], keys, index_scale)[0]
            mask = selected_mask(scores, causal, topk)
        if prefill_form == "absorbed" and total > topk:
            out[rows] = _gathered(q_nope[rows], q_rope[rows], flat, slots, mask, w_kv_b, scale, topk)
        else:
            kv = flat[slots][None].to(q_nope.dtype)
            out[rows] = FORMS[prefill_form](q_nope[rows][None], q_rope[rows][None], kv, mask[None], w_kv_b, scale)[0]
    return out


def _gathered(
    q_nope: torch.Tensor, q_rope: torch.Tensor, flat: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor,
    w_kv_b: torch.Tensor, scale: float, topk: int,
) -> torch.Tensor:
    """Each query over only its selected latents: [Q, topk] gathered entries,
    one absorbed attention per query, GATHER_ROWS queries at a time."""
    outs = []
    for a in range(0, q_nope.shape[0], GATHER_ROWS):
        m = mask[a : a + GATHER_ROWS]
        # The selected positions in index order; rows that see fewer than topk
        # pad with masked entries.
        idx = stable_topk(m.to(torch.int8), topk)
        ok = m.gather(1, idx)
        kv = flat[slots[idx]].to(q_nope.dtype)  # [rows, topk, R + Dr]
        o = FORMS["absorbed"](q_nope[a : a + GATHER_ROWS, None], q_rope[a : a + GATHER_ROWS, None], kv,
                              ok[:, None], w_kv_b, scale)
        outs.append(o[:, 0])
    return torch.cat(outs)
