"""Plain-torch Multi-head Latent Attention over a paged latent cache: the
reference for faster MLA kernels, and the CPU path.

Cache layout: [num_blocks, block_size, R + Dr] per layer, where each token's
entry is its normalized KV latent c (R = kv_lora_rank values) followed by its
rotated, head-shared rope key (Dr = qk_rope_head_dim values). Per-head keys
and values are never stored: they are c @ W_UK and c @ W_UV, with
kv_b_proj.weight viewed as [H, Dn + Dv, R] = [W_UK ; W_UV] per head.

Two algebraically equal forms:
- expanded: materialize per-head K = [c W_UK^T | k_rope] and V = c W_UV^T for
  the context, then ordinary attention. Cheap when many queries share a
  context (prefill).
- absorbed: fold W_UK into the query (q_lat = q_nope W_UK, then score =
  q_lat . c + q_rope . k_rope, one multi-query attention over the cached
  entries themselves), attend in latent space, and fold W_UV into the output.
  Reads only the latent per context token: the decode form.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from jevons.kernels.attention_metadata import AttentionMetadata

# (q_nope [B,Q,H,Dn], q_rope [B,Q,H,Dr], kv [B,L,R+Dr], mask [B,Q,L], w_kv_b [H,Dn+Dv,R], scale) -> [B,Q,H,Dv]
MLAForm = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def write_latent(kv_cache: torch.Tensor, latent: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Scatter this step's [N, R + Dr] entries into their cache slots."""
    kv_cache.view(-1, kv_cache.shape[-1]).index_copy_(0, slot_mapping, latent.to(kv_cache.dtype))


def absorbed(
    q_nope: torch.Tensor, q_rope: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor, w_kv_b: torch.Tensor, scale: float
) -> torch.Tensor:
    dn = q_nope.shape[-1]
    r = w_kv_b.shape[-1]
    q_lat = torch.einsum("bqhd,hdr->bqhr", q_nope, w_kv_b[:, :dn])
    q = torch.cat([q_lat, q_rope], dim=-1)  # [B, Q, H, R + Dr]: one query against the raw entries
    s = torch.einsum("bqhc,blc->bhql", q, kv) * scale
    s = s.masked_fill(~mask[:, None], float("-inf"))
    p = s.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    o_lat = torch.einsum("bhql,blr->bqhr", p, kv[..., :r])
    return torch.einsum("bqhr,hvr->bqhv", o_lat, w_kv_b[:, dn:])


def expanded(
    q_nope: torch.Tensor, q_rope: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor, w_kv_b: torch.Tensor, scale: float
) -> torch.Tensor:
    b, l, _ = kv.shape
    h, dn, r = q_nope.shape[2], q_nope.shape[-1], w_kv_b.shape[-1]
    kvb = F.linear(kv[..., :r], w_kv_b.reshape(-1, r)).view(b, l, h, -1)
    k_nope, v = kvb[..., :dn], kvb[..., dn:]
    k = torch.cat([k_nope, kv[:, :, None, r:].expand(b, l, h, -1)], dim=-1)
    q = torch.cat([q_nope, q_rope], dim=-1)
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask[:, None], scale=scale
    )
    return o.transpose(1, 2)


FORMS: dict[str, MLAForm] = {"absorbed": absorbed, "expanded": expanded}


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
    """q_nope [N, H, Dn], q_rope [N, H, Dr] (rotated); latent: this step's
    [N, R + Dr] entries, already written to kv_cache. Returns [N, H, Dv]."""
    n, h, _ = q_nope.shape
    out = q_nope.new_empty(n, h, w_kv_b.shape[1] - q_nope.shape[-1])
    flat = kv_cache.view(-1, kv_cache.shape[-1])
    if len(meta.decode_seqs):
        t = meta.decode_tokens
        kv = flat[meta.decode_kv_slots].to(q_nope.dtype)  # [Bd, Ld, R + Dr]
        o = FORMS[decode_form](q_nope[t, None], q_rope[t, None], kv, meta.decode_mask[:, 0], w_kv_b, scale)
        out[t] = o[:, 0]
    form = FORMS[prefill_form]
    for span in meta.prefills:
        rows = slice(span.start, span.end)
        q_len = span.end - span.start
        total = span.context_start + q_len
        if span.context_start == 0:
            kv = latent[rows]  # nothing cached before: skip the gather
        else:
            j = torch.arange(total, device=q_nope.device)
            table = meta.block_tables[span.seq]
            kv = flat[table[j // meta.block_size] * meta.block_size + j % meta.block_size]
        qpos = span.context_start + torch.arange(q_len, device=q_nope.device)
        mask = torch.arange(total, device=q_nope.device)[None, :] <= qpos[:, None]
        kv = kv[None].to(q_nope.dtype)
        out[rows] = form(q_nope[rows][None], q_rope[rows][None], kv, mask[None], w_kv_b, scale)[0]
    return out
