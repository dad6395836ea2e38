"""DeepSeek-V3.2 (DeepseekV32ForCausalLM): DeepSeek-V3 with DeepSeek Sparse
Attention in every layer (layers/sparse_mla.py).

Everything but attention is V3's: the same MoE with the sigmoid/noaux_tc
router, the same MLA projections and interleaved rope, the same weight names.
So the model is models/deepseek.py's, built as a V3 and with each layer's
attention swapped for the sparse one, whose extra parameters
(`self_attn.indexer.*`) load by name like the rest.

The paged cache per layer is (latent + rope key, indexer key): see
kv_cache_spec(). FP8 checkpoints (all of DeepSeek's) cache the indexer key in
e4m3 with block scales, as DeepSeek serves them (layers/dsa_indexer.py). The checkpoint's multi-token-prediction layer is not used
(transformers ignores it too); its tensors are skipped at load.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from jevons.config import ModelConfig
from jevons.models.deepseek import CacheSpec, DeepseekForCausalLM
from jevons.models.layers.dsa_indexer import IndexerConfig
from jevons.models.layers.sparse_mla import SparseMLAttention


class DeepseekV32ForCausalLM(DeepseekForCausalLM):
    def __init__(self, cfg: ModelConfig) -> None:
        # Build V3 (its router rule and rope layout), without the MTP block.
        v3 = replace(cfg, architecture="DeepseekV3ForCausalLM", hf=dict(cfg.hf, num_nextn_predict_layers=0))
        super().__init__(v3)
        self.cfg = cfg
        self.index = IndexerConfig.from_hf(cfg.hf)
        for i, layer in enumerate(self.layers):
            layer.self_attn = SparseMLAttention(self.mla, self.index, i, self.rotary)

    def kv_cache_spec(self, dtype: torch.dtype | None = None) -> CacheSpec:
        """Per layer: the MLA latent + rope key in K, the indexer key in V, in
        elements of the cache's dtype (the model's, unless given): an FP8
        checkpoint's e4m3 keys and scales are a fixed number of bytes."""
        dtype = dtype or self.embed_tokens.weight.dtype
        return [((self.mla.cache_entry,), (self.index.cache_entry(dtype),))] * self.cfg.num_hidden_layers
