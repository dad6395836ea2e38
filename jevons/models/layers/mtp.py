"""DeepSeek-V3 multi-token prediction (MTP): one extra transformer block that
predicts the token after next from the main model's final hidden state.

For position i it combines the main model's (normed) hidden state h_i with the
embedding of token t_{i+1}:
    x = eh_proj([enorm(embed(t_{i+1})) ; hnorm(h_i)])
    h'_i = shared_head.norm(block(x))
and the shared output head turns h'_i into logits for t_{i+2}. Embedding and
output head are the main model's: DeepSeek shares them, and the copies its
checkpoint stores under the MTP layer are skipped at load.

The block has its own attention layer, so it needs its own KV cache entry
(layer index num_hidden_layers + depth); speculative decoding will drive it.
"""
from __future__ import annotations

import torch
from torch import nn

from jevons.models.forward_context import ForwardContext
from jevons.models.layers.norm import RMSNorm

# Tensor names (relative to `layers.{N + depth}.`) that belong to the MTP
# wrapper itself; everything else there belongs to its decoder block.
MTP_OWN = ("enorm.", "hnorm.", "eh_proj.", "shared_head.norm.")
# Copies of the main model's embedding and head: not loaded twice.
MTP_SHARED = ("embed_tokens.", "shared_head.head.")


class SharedHead(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(hidden, eps)


class MTPLayer(nn.Module):
    def __init__(self, block: nn.Module, hidden: int, eps: float) -> None:
        super().__init__()
        self.enorm = RMSNorm(hidden, eps)
        self.hnorm = RMSNorm(hidden, eps)
        self.eh_proj = nn.Linear(2 * hidden, hidden, bias=False)
        self.shared_head = SharedHead(hidden, eps)
        self.block = block

    def forward(
        self, next_embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        """next_embeds: embeddings of t_{i+1}; hidden: main model output at i.
        Returns the normed hidden state that the shared head maps to t_{i+2}."""
        x = self.eh_proj(torch.cat([self.enorm(next_embeds), self.hnorm(hidden)], dim=-1))
        return self.shared_head.norm(self.block(positions, x, ctx))
