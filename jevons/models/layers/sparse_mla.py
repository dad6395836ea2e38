"""MLA with DeepSeek Sparse Attention (V3.2): layers/mla.py's attention plus a
lightning indexer (layers/dsa_indexer.py) that picks, for each query, the
`index_topk` cached tokens it attends to.

The layer's paged cache is the pair the runner allocates from
kv_cache_spec(): the K tensor holds MLA's latent + rope key per token (as for
V2/V3), the V tensor — empty for plain MLA — holds the indexer's key per
token (e4m3 + block scales for FP8 checkpoints: kernels/torch_ref/
index_keys.py). Both are written through the same slot mapping, so a block carries
everything a later step needs from its tokens; prefix caching, chunked
prefill, preemption and the cache tiers treat the pair like any other.
"""
from __future__ import annotations

import torch

from jevons.kernels.cpu.mla_prep import mla_prep
from jevons.kernels.registry import ops_for
from jevons.kernels.torch_ref.sparse_mla import sparse_mla_attention, write_index_keys
from jevons.models.forward_context import ForwardContext
from jevons.models.layers.dsa_indexer import IndexerConfig, LightningIndexer
from jevons.models.layers.mla import MLAConfig, MLAttention
from jevons.models.layers.rotary import RotaryEmbedding


class SparseMLAttention(MLAttention):
    def __init__(self, c: MLAConfig, index: IndexerConfig, layer_idx: int, rotary: RotaryEmbedding) -> None:
        if c.q_lora_rank is None:
            raise ValueError("sparse MLA needs the query bottleneck (q_lora_rank)")
        super().__init__(c, layer_idx, rotary)
        self.indexer = LightningIndexer(index, rotary)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        c = self.c
        n = x.shape[0]
        q_resid = self.q_a_layernorm(self.q_a_proj(x))  # shared by MLA's query and the indexer's
        q = self.q_b_proj(q_resid).view(n, c.num_heads, -1)
        kv = self.kv_a_proj_with_mqa(x)
        kv_cache, key_cache = ctx.kv_caches[self.layer_idx]
        ops = ops_for(x.device)  # the C decode kernel on the CPU (kernels/cpu/sparse_mla.py)
        prepped = None
        if ops.backend == "cpu":  # rope, latent norm and cache write in one C call, as MLAttention
            prepped = mla_prep(q, kv, c.qk_nope_head_dim, c.kv_lora_rank, self.rotary.cos, self.rotary.sin,
                               positions, self.kv_a_layernorm.weight, self.kv_a_layernorm.eps, c.rope_interleave,
                               kv_cache, ctx.attn.slot_mapping)
        q_rope, _ = prepped if prepped is not None else self._prep_torch(positions, q, kv, kv_cache, ctx, ops)
        q_nope = q[..., : c.qk_nope_head_dim]
        index_q, index_k, index_w = self.indexer(positions, x, q_resid)
        ic = self.indexer.c
        write_index_keys(key_cache, index_k, ctx.attn.slot_mapping, ic.fp8)
        w_kv_b, w_scale = self.kv_b_rows()  # int8 rows when quantized: the decode kernel reads them as stored
        out = sparse_mla_attention(
            q_nope, q_rope, kv_cache, index_q, index_w, key_cache, ctx.attn, w_kv_b, c.scale, ic.scale, ic.topk,
            self.decode_form, self.prefill_form, ops.sparse_mla_decode, ic.fp8, ops.index_scores_decode, w_scale,
        )
        return self.o_proj(out.reshape(n, -1))
