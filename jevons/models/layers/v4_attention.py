"""DeepSeek-V4's attention layer: every layer attends to a sliding window of
the last `sliding_window` tokens; a compressed sparse (CSA) layer adds
pooled entries every `m` tokens, chosen per query by a lightning indexer; a
heavily compressed (HCA) layer adds pooled entries every `m'` tokens.

One shared K = V head (`wkv` -> RMSNorm -> rope); queries through a low-rank
bottleneck (`wq_a` -> `q_norm` -> `wq_b`) and an unweighted per-head RMSNorm;
per-head attention sinks; the output's rope dims rotated back by the query's
position (V carried rope); a grouped low-rank output projection (`wo_a` per
head group, then `wo_b`). Module names are the checkpoints' own.

The paged cache layout and the pooling are kernels/torch_ref/v4_attention.py's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from jevons.kernels.torch_ref.v4_attention import (
    attend_with_sinks, context_slots, index_select_entries, pool_entries, rms_norm, rope_cos_sin, rope_tail,
    sequences,
)
from jevons.models.forward_context import ForwardContext

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

    def pool(self, cached: torch.Tensor, eps: float, inv_freq: torch.Tensor) -> torch.Tensor:
        kv, gate = cached.split(self.width, dim=-1)
        return pool_entries(kv, gate, self.ape, self.norm.weight, eps, self.rate, self.overlap, inv_freq)


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

    def cache_entry(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(K, V) per token: the window entry; the compressor inputs."""
        v = 0
        if self.compressor is not None:
            v = 2 * self.compressor.width
        if self.indexer is not None:
            v += 2 * self.indexer.compressor.width
        return (self.c.head_dim,), (v,)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        c = self.c
        n = x.shape[0]
        cos, sin = rope_cos_sin(positions, self.inv_freq)
        q_res = rms_norm(self.wq_a(x), self.q_norm.weight, c.eps)
        q = rms_norm(self.wq_b(q_res).view(n, c.heads, c.head_dim), None, c.eps)
        q = rope_tail(q, cos[:, None], sin[:, None])
        kv = rope_tail(rms_norm(self.wkv(x), self.norm.weight, c.eps), cos, sin)

        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        slots = ctx.attn.slot_mapping
        k_flat = k_cache.view(-1, c.head_dim)
        k_flat.index_copy_(0, slots, kv.to(k_cache.dtype))
        v_flat = v_cache.view(-1, v_cache.shape[-1]) if v_cache.shape[-1] else None
        if v_flat is not None:
            parts = [self.compressor.inputs(x)] + ([self.indexer.compressor.inputs(x)] if self.indexer else [])
            v_flat.index_copy_(0, slots, torch.cat(parts, dim=-1).to(v_cache.dtype))
        iq = iw = None
        if self.indexer is not None:
            iq = self.indexer.wq_b(q_res).view(n, c.index_heads, c.index_head_dim)
            iq = rope_tail(iq, cos[:, None], sin[:, None])
            iw = self.indexer.weights_proj(x).float() * c.index_heads**-0.5

        out = torch.empty_like(q)
        for seq, rows, _, total in sequences(ctx.attn):
            ctx_slots = context_slots(ctx.attn, seq, total)
            qpos = positions[rows]
            j = torch.arange(total, device=x.device)
            mask = (j[None, :] <= qpos[:, None]) & (j[None, :] > qpos[:, None] - c.window)
            keys = k_flat[ctx_slots].to(q.dtype)
            if self.compressor is not None:
                cached = v_flat[ctx_slots].to(q.dtype)
                width = 2 * self.compressor.width
                entries = self.compressor.pool(cached[:, :width], c.eps, self.inv_freq)
                # Entry w pools tokens up to (w + 1) * rate - 1: visible once those are.
                visible = torch.arange(entries.shape[0], device=x.device)[None, :] < (
                    (qpos + 1) // self.compressor.rate
                )[:, None]
                if self.indexer is not None:
                    index_keys = self.indexer.compressor.pool(cached[:, width:], c.eps, self.inv_freq)
                    visible = index_select_entries(iq[rows], iw[rows], index_keys, visible, c.index_topk)
                keys = torch.cat([keys, entries])
                mask = torch.cat([mask, visible], dim=1)
            out[rows] = attend_with_sinks(q[rows], keys, mask, self.attn_sink, c.head_dim**-0.5)

        out = rope_tail(out, cos[:, None], -sin[:, None])
        g = c.o_groups
        grouped = torch.einsum("ngi,gri->ngr", out.reshape(n, g, -1), self.wo_a.weight.view(g, c.o_lora_rank, -1))
        return self.wo_b(grouped.reshape(n, -1))
