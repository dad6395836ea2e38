"""Plain-torch paged attention: the reference every faster backend is tested
against, and the CPU path. Correct for any mix of decode rows, chunked prefill
and prefill over a cached prefix in one flat batch.

Cache layout: [num_blocks, block_size, kv_heads, head_dim]; slot = block * block_size + offset.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from jevons.kernels.attention_metadata import AttentionMetadata


def write_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Scatter this step's keys and values ([N, Hkv, D]) into their cache slots."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float, causal: bool) -> torch.Tensor:
    """q: [B, Hq, Lq, D]; k, v: [B, Hkv, Lk, D]. Expands K/V heads for GQA
    rather than relying on enable_gqa, which not every CPU kernel honours."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q: [N, Hq, D]; k, v: this step's [N, Hkv, D], already written to the cache.
    Returns [N, Hq, Dv]."""
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
    kf = k_cache.view(-1, *k_cache.shape[2:])
    vf = v_cache.view(-1, *v_cache.shape[2:])
    if len(meta.decode_seqs):
        qd = q[meta.decode_tokens].unsqueeze(2)  # [Bd, Hq, 1, D]
        kd = kf[meta.decode_kv_slots].transpose(1, 2)  # [Bd, Hkv, Ld, D]
        vd = vf[meta.decode_kv_slots].transpose(1, 2)
        out[meta.decode_tokens] = _sdpa(qd, kd, vd, meta.decode_mask, scale, False).squeeze(2)
    attend_prefills(out, q, k, v, kf, vf, meta, scale)
    return out


def attend_prefills(
    out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    kf: torch.Tensor, vf: torch.Tensor, meta: AttentionMetadata, scale: float,
) -> None:
    """Fill `out` for every multi-token span; kf/vf are the caches flattened to
    [slots, Hkv, D]. Shared with the C backend, which only replaces decode."""
    for span in meta.prefills:
        qs = q[span.start : span.end].transpose(0, 1).unsqueeze(0)  # [1, Hq, Q, D]
        if span.context_start == 0:
            # Nothing cached before this chunk: attend to the fresh K/V causally.
            ks = k[span.start : span.end].transpose(0, 1).unsqueeze(0)
            vs = v[span.start : span.end].transpose(0, 1).unsqueeze(0)
            o = _sdpa(qs, ks, vs, None, scale, True)
        else:
            total = span.context_start + span.end - span.start
            j = torch.arange(total, device=q.device)
            row = meta.block_tables[span.seq]
            slots = row[j // meta.block_size] * meta.block_size + j % meta.block_size
            ks = kf[slots].transpose(0, 1).unsqueeze(0)
            vs = vf[slots].transpose(0, 1).unsqueeze(0)
            qpos = span.context_start + torch.arange(span.end - span.start, device=q.device)
            mask = j[None, :] <= qpos[:, None]
            o = _sdpa(qs, ks, vs, mask, scale, False)
        out[span.start : span.end] = o.squeeze(0).transpose(0, 1)
