"""The one explicit per-step object a model's forward reads besides its inputs."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jevons.kernels.attention_metadata import AttentionMetadata


@dataclass(frozen=True)
class ForwardContext:
    attn: AttentionMetadata
    # One entry per attention layer: (k_cache, v_cache), each
    # [num_blocks, block_size, kv_heads, head_dim]. MLA models store their latent
    # in the first tensor and leave the second empty.
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
