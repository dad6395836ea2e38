"""Attention over the paged KV cache, dispatched to a kernel backend."""
from __future__ import annotations

import torch
from torch import nn

from jevons.kernels.registry import ops_for
from jevons.models.forward_context import ForwardContext


class PagedAttention(nn.Module):
    def __init__(self, layer_idx: int, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """q: [N, Hq, D]; k, v: [N, Hkv, D] -> [N, Hq * D]."""
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        ops = ops_for(q.device)  # torch reference on CPU, Triton on CUDA (registry.py)
        ops.write_kv(k_cache, v_cache, k, v, ctx.attn.slot_mapping)
        out = ops.paged_attention(q, k, v, k_cache, v_cache, ctx.attn, self.scale)
        return out.reshape(out.shape[0], -1)
