"""DeepSeek-V4's attention over a paged cache, in plain torch: a sliding window
of raw entries plus compressed entries (CSA: one per m tokens, chosen per
query by a lightning indexer; HCA: one per m' tokens, all visible), one shared
K = V head, per-head attention sinks.

The cache layout (compressed entries in the engine's blocks, window entries
and compressor inputs in a window pool) is models/layers/v4_cache.py's; the
functions here are the math: pooling a span of groups, the indexer's
selection, attention with sinks.

Rope is interleaved (pairs (x0, x1), ...) on the trailing rope dims of a head.
"""
from __future__ import annotations

import torch

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.kernels.torch_ref.moe_routing import stable_topk

# Query rows scored / attended at once: bounds the [rows, heads, L] float32
# intermediates of a long prefill.
ATTEND_ROWS = 32


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] positions -> cos, sin [N, R/2] (float32), computed on the fly: V4's
    contexts reach 1M tokens, too many for a table."""
    freqs = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]
    return freqs.cos(), freqs.sin()


def rope_tail(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the trailing 2 * cos.shape[-1] dims of x in interleaved pairs;
    cos/sin must broadcast against x[..., :R/2]."""
    r = 2 * cos.shape[-1]
    nope, rope = x[..., :-r], x[..., -r:].float()
    c, s = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
    rot = torch.stack((-rope[..., 1::2], rope[..., 0::2]), dim=-1).flatten(-2)
    return torch.cat([nope, (rope * c + rot * s).to(x.dtype)], dim=-1)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf if weight is None else weight.float() * xf).to(x.dtype)


def pool_entries(
    kv: torch.Tensor, gate: torch.Tensor, ape: torch.Tensor, norm_weight: torch.Tensor, eps: float,
    rate: int, overlap: bool, inv_freq: torch.Tensor, first: int = 0,
) -> torch.Tensor:
    """Compressed entries [W, D] of the first W = len // rate complete windows
    of a span that starts at group `first` (its rope position first * rate).
    kv, gate [len, c D] per token (c = 2 with overlap, else 1); ape [rate, c D].
    Entry w is a softmax(gate + ape)-weighted sum over its window (with
    overlap: over window w's second half-series and window w-1's first),
    RMS-normalized, rotated at position w * rate."""
    w = kv.shape[0] // rate
    if w == 0:
        return kv.new_zeros(0, norm_weight.shape[0])
    kv = kv[: w * rate].view(w, rate, -1)
    gate = gate[: w * rate].view(w, rate, -1) + ape
    if overlap:
        d = kv.shape[-1] // 2
        pk = kv.new_zeros(w, 2 * rate, d)
        pg = gate.new_full((w, 2 * rate, d), float("-inf"))
        pk[:, rate:], pg[:, rate:] = kv[..., d:], gate[..., d:]
        pk[1:, :rate], pg[1:, :rate] = kv[:-1, :, :d], gate[:-1, :, :d]
        kv, gate = pk, pg
    pooled = (kv * gate.softmax(dim=1, dtype=torch.float32).to(kv.dtype)).sum(dim=1)
    pooled = rms_norm(pooled, norm_weight, eps)
    pos = (torch.arange(w, device=kv.device) + first) * rate
    return rope_tail(pooled, *rope_cos_sin(pos, inv_freq))


def index_select_entries(
    q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor, visible: torch.Tensor, topk: int
) -> torch.Tensor:
    """The lightning indexer over compressed keys: q [Q, Hi, Di] (rotated),
    weights [Q, Hi] (scaled), keys [W, Di], visible [Q, W] -> selected [Q, W]:
    each query's top-k visible entries by sum_h w_h relu(q_h . k) / sqrt(Di)."""
    if keys.shape[0] == 0:
        return visible
    scores = torch.empty(visible.shape, dtype=torch.float32, device=q.device)
    for r in range(0, q.shape[0], ATTEND_ROWS):  # bounds the [rows, heads, W] intermediate
        rows = slice(r, r + ATTEND_ROWS)
        s = torch.einsum("qhd,wd->qhw", q[rows].float(), keys.float()).relu() * q.shape[-1] ** -0.5
        scores[rows] = (s * weights[rows].float()[..., None]).sum(dim=1)
    scores = scores.masked_fill(~visible, float("-inf"))
    idx = stable_topk(scores, min(topk, keys.shape[0]))
    return torch.zeros_like(visible).scatter_(1, idx, visible.gather(1, idx))


def attend_with_sinks(
    q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor, sinks: torch.Tensor, scale: float
) -> torch.Tensor:
    """q [Q, H, D] over shared K = V entries kv [L, D], mask [Q, L]; each head
    also has a sink logit that takes probability mass but adds no value."""
    out = torch.empty_like(q)
    for r in range(0, q.shape[0], ATTEND_ROWS):
        rows = slice(r, r + ATTEND_ROWS)
        s = torch.einsum("qhd,ld->qhl", q[rows], kv) * scale
        s = s.masked_fill(~mask[rows, None], float("-inf"))
        s = torch.cat([s, sinks.to(s.dtype)[None, :, None].expand(s.shape[0], -1, 1)], dim=-1)
        p = (s - s.max(dim=-1, keepdim=True).values).softmax(dim=-1)[..., :-1]
        out[rows] = torch.einsum("qhl,ld->qhd", p.to(kv.dtype), kv)
    return out


def sequences(meta: AttentionMetadata) -> list[tuple[int, torch.Tensor, int, int]]:
    """Every request of the step as (seq row, its flat token rows, context
    start, total context): decode rows and prefill spans alike."""
    out = []
    for i, seq in enumerate(meta.decode_seqs.tolist()):
        t = meta.decode_tokens[i : i + 1]
        total = int(meta.seq_lens[seq])
        out.append((seq, t, total - 1, total))
    for span in meta.prefills:
        rows = torch.arange(span.start, span.end, device=meta.seq_lens.device)
        out.append((span.seq, rows, span.context_start, span.context_start + span.end - span.start))
    return out


def context_slots(meta: AttentionMetadata, seq: int, total: int) -> torch.Tensor:
    j = torch.arange(total, device=meta.block_tables.device)
    return meta.block_tables[seq][j // meta.block_size] * meta.block_size + j % meta.block_size
