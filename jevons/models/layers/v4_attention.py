"""DeepSeek-V4's attention layer: every layer attends to a sliding window of
the last `sliding_window` tokens; a compressed sparse (CSA) layer adds
pooled entries every `m` tokens, chosen per query by a lightning indexer; a
heavily compressed (HCA) layer adds pooled entries every `m'` tokens.

One shared K = V head (`wkv` -> RMSNorm -> rope); queries through a low-rank
bottleneck (`wq_a` -> `q_norm` -> `wq_b`) and an unweighted per-head RMSNorm;
per-head attention sinks; the output's rope dims rotated back by the query's
position (V carried rope); a grouped low-rank output projection (`wo_a` per
head group, then `wo_b`). Module names are the checkpoints' own.

The paged cache layout is models/layers/v4_cache.py's (compressed entries in
the engine's blocks, the window and the compressor inputs in a window pool);
the math is kernels/torch_ref/v4_attention.py's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from jevons.kernels.torch_ref.v4_attention import (
    attend_with_sinks, index_select_entries, pool_entries, rms_norm, rope_cos_sin, rope_tail,
)
from jevons.models.forward_context import ForwardContext
from jevons.models.layers.v4_cache import SeqStep, V4Step, entries_per_block, entry_view, per_token_width

SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"


@dataclass(frozen=True)
class V4AttentionConfig:
    hidden: int
    heads: int
    head_dim: int
    q_lora_rank: int
    o_groups: int
    o_lora_rank: int
    window: int
    eps: float
    index_heads: int
    index_head_dim: int
    index_topk: int
    csa_rate: int
    hca_rate: int


class Weight(nn.Module):
    """A bare weight under the checkpoint's `<name>.weight` (norms, grouped projections)."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(*shape))


class Compressor(nn.Module):
    """Per-token projections a pooled entry is made from (`wkv`, `wgate`, the
    per-position bias `ape`, the pooled entry's `norm`). CSA pools two
    overlapping series, hence twice the width."""

    def __init__(self, hidden: int, dim: int, rate: int, overlap: bool) -> None:
        super().__init__()
        width = (2 if overlap else 1) * dim
        self.rate, self.overlap, self.width = rate, overlap, width
        self.wkv = nn.Linear(hidden, width, bias=False)
        self.wgate = nn.Linear(hidden, width, bias=False)
        self.ape = nn.Parameter(torch.zeros(rate, width))
        self.norm = Weight(dim)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.wkv(x), self.wgate(x)], dim=-1)

    def pool(self, cached: torch.Tensor, eps: float, inv_freq: torch.Tensor, first: int = 0) -> torch.Tensor:
        kv, gate = cached.split(self.width, dim=-1)
        return pool_entries(kv, gate, self.ape, self.norm.weight, eps, self.rate, self.overlap, inv_freq, first)


class Indexer(nn.Module):
    def __init__(self, c: V4AttentionConfig) -> None:
        super().__init__()
        self.wq_b = nn.Linear(c.q_lora_rank, c.index_heads * c.index_head_dim, bias=False)
        self.weights_proj = nn.Linear(c.hidden, c.index_heads, bias=False)
        self.compressor = Compressor(c.hidden, c.index_head_dim, c.csa_rate, overlap=True)


class V4Attention(nn.Module):
    def __init__(self, c: V4AttentionConfig, layer_idx: int, kind: str, inv_freq: torch.Tensor) -> None:
        super().__init__()
        self.c, self.layer_idx, self.kind = c, layer_idx, kind
        self.inv_freq = inv_freq  # main rope for sliding layers, the compress rope otherwise
        self.wq_a = nn.Linear(c.hidden, c.q_lora_rank, bias=False)
        self.q_norm = Weight(c.q_lora_rank)
        self.wq_b = nn.Linear(c.q_lora_rank, c.heads * c.head_dim, bias=False)
        self.wkv = nn.Linear(c.hidden, c.head_dim, bias=False)
        self.norm = Weight(c.head_dim)
        self.wo_a = Weight(c.o_groups * c.o_lora_rank, c.heads * c.head_dim // c.o_groups)
        self.wo_b = nn.Linear(c.o_groups * c.o_lora_rank, c.hidden, bias=False)
        self.attn_sink = nn.Parameter(torch.zeros(c.heads))
        self.compressor: Compressor | None = None
        self.indexer: Indexer | None = None
        if kind == CSA:
            self.compressor = Compressor(c.hidden, c.head_dim, c.csa_rate, overlap=True)
            self.indexer = Indexer(c)
        elif kind == HCA:
            self.compressor = Compressor(c.hidden, c.head_dim, c.hca_rate, overlap=False)

    def to_device(self, device: torch.device | str) -> None:
        self.inv_freq = self.inv_freq.to(device)

    def cache_entries(self, block_size: int) -> tuple[tuple, tuple, tuple]:
        """((main K, main V), (window K, window V), (short K, short V))
        per-token shapes (v4_cache.py): the window lane holds the window entry
        and HCA's compressor inputs, the short lane CSA's (needed for 2m - 1
        tokens only)."""
        c, d = self.c, self.c.head_dim
        main: tuple = ((0,), (0,))
        raw = short = 0
        if self.compressor is not None:
            e = entries_per_block(self.compressor.rate, block_size)
            idx = per_token_width(e * c.index_head_dim, block_size) if self.indexer is not None else 0
            main = ((per_token_width(e * d, block_size),), (idx,))
            inputs = 2 * self.compressor.width + (2 * self.indexer.compressor.width if self.indexer is not None else 0)
            raw, short = (0, inputs) if self.kind == CSA else (inputs, 0)
        return main, ((d,), (raw,)), ((0,), (short,))

    def forward(self, positions: torch.Tensor, x: torch.Tensor, ctx: ForwardContext, step: V4Step) -> torch.Tensor:
        c = self.c
        n = x.shape[0]
        cos, sin = rope_cos_sin(positions, self.inv_freq)
        q_res = rms_norm(self.wq_a(x), self.q_norm.weight, c.eps)
        q = rms_norm(self.wq_b(q_res).view(n, c.heads, c.head_dim), None, c.eps)
        q = rope_tail(q, cos[:, None], sin[:, None])
        kv = rope_tail(rms_norm(self.wkv(x), self.norm.weight, c.eps), cos, sin)

        win_k, win_v = ctx.kv_caches[step.window_offset + self.layer_idx]
        wk = win_k.view(-1, c.head_dim)
        wk.index_copy_(0, step.new_win_slots, kv.to(wk.dtype))
        wv = None
        if self.compressor is not None:  # the compressor inputs: CSA's in the short lane
            short = self.kind == CSA
            raw_v = ctx.kv_caches[step.short_offset + self.layer_idx][1] if short else win_v
            wv = raw_v.view(-1, raw_v.shape[-1])
            parts = [self.compressor.inputs(x)] + ([self.indexer.compressor.inputs(x)] if self.indexer else [])
            wv.index_copy_(0, step.new_short_slots if short else step.new_win_slots,
                           torch.cat(parts, dim=-1).to(wv.dtype))
        iq = iw = None
        if self.indexer is not None:
            iq = self.indexer.wq_b(q_res).view(n, c.index_heads, c.index_head_dim)
            iq = rope_tail(iq, cos[:, None], sin[:, None])
            iw = self.indexer.weights_proj(x).float() * c.index_heads**-0.5

        out = torch.empty_like(q)
        for s in step.seqs:
            qpos = positions[s.rows]
            lo = max(s.lo, s.start - c.window + 1)
            j = torch.arange(lo, s.total, device=x.device)
            mask = (j[None, :] <= qpos[:, None]) & (j[None, :] > qpos[:, None] - c.window)
            keys = wk[s.win_slots[lo - s.lo :]].to(q.dtype)
            if self.compressor is not None:
                entries, visible = self._entries(s, wv, ctx, qpos, iq, iw)
                keys = torch.cat([keys, entries.to(q.dtype)])
                mask = torch.cat([mask, visible], dim=1)
            out[s.rows] = attend_with_sinks(q[s.rows], keys, mask, self.attn_sink, c.head_dim**-0.5)

        out = rope_tail(out, cos[:, None], -sin[:, None])
        g = c.o_groups
        grouped = torch.einsum("ngi,gri->ngr", out.reshape(n, g, -1), self.wo_a.weight.view(g, c.o_lora_rank, -1))
        return self.wo_b(grouped.reshape(n, -1))

    def _entries(self, s: SeqStep, wv: torch.Tensor, ctx: ForwardContext, qpos: torch.Tensor,
                 iq: torch.Tensor | None, iw: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool the groups this step completes into the main pool, then read
        every entry the request has, with the queries' visibility (CSA: and
        the indexer's top-k)."""
        c, comp, bs = self.c, self.compressor, ctx.attn.block_size
        m, width = comp.rate, 2 * comp.width
        per_block = entries_per_block(m, bs)
        main_k, main_v = ctx.kv_caches[self.layer_idx]
        store = entry_view(main_k, per_block, c.head_dim)
        istore = entry_view(main_v, per_block, c.index_head_dim) if self.indexer is not None else None
        g0, g1 = s.start // m, s.total // m  # groups whose last token is in this step
        if g1 > g0:
            prev = 1 if comp.overlap and g0 > 0 else 0  # CSA's entry g also pools group g-1's first series
            t0 = (g0 - prev) * m
            lo, slots = (s.short_lo, s.short_slots) if self.kind == CSA else (s.lo, s.win_slots)
            raw = wv[slots[t0 - lo : g1 * m - lo]].to(store.dtype)
            bid, e = s.entry_locations(torch.arange(g0, g1, device=raw.device), m, bs, per_block)
            store[bid, e] = comp.pool(raw[:, :width], c.eps, self.inv_freq, g0 - prev)[prev:].to(store.dtype)
            if istore is not None:
                ic = self.indexer.compressor
                keys = ic.pool(raw[:, width:], c.eps, self.inv_freq, g0 - prev)[prev:]
                istore[bid, e] = keys.to(istore.dtype)
        groups = torch.arange(g1, device=qpos.device)
        bid, e = s.entry_locations(groups, m, bs, per_block)
        entries = store[bid, e]
        visible = groups[None, :] < ((qpos + 1) // m)[:, None]
        if istore is not None:
            visible = index_select_entries(iq[s.rows], iw[s.rows], istore[bid, e].to(iq.dtype), visible, c.index_topk)
        return entries, visible
