"""The contract between the runner and a model, as a `typing.Protocol` (the
tokenizer's is loader/tokenizer_like.py).

A new architecture is a class that satisfies `CausalLM` (and is an
`nn.Module`), registered in models/registry.py; nothing above the models
layer looks at its concrete type. tests/test_interfaces.py checks that every
registered model class fits it.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch

from jevons.models.forward_context import ForwardContext

# Per layer, the per-token shapes of its K and V cache entries: (kv_heads,
# head_dim) each for attention; (latent + rope dims,) and () for MLA, whose
# cache holds only the compressed latent.
KVCacheSpec = list[tuple[tuple[int, ...], tuple[int, ...]]]


@runtime_checkable
class CausalLM(Protocol):
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Hidden states [tokens, hidden] for a flat batch of tokens; `ctx`
        carries the paged-attention metadata and the KV caches to write."""
        ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [rows, vocab] for the rows that sample."""
        ...

    def kv_cache_spec(self) -> KVCacheSpec: ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors (Hugging Face names) in; returns what it filled."""
        ...

    def expected_weights(self) -> set[str]:
        """What load_weights must have filled for the model to be complete."""
        ...
