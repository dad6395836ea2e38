"""jevons.bench.bytes_floor's count of the bytes a batch-1 token reads."""
from __future__ import annotations

import torch
from torch import nn

from jevons.bench.bytes_floor import model_bytes_per_token
from jevons.kernels.torch_ref.moe_routing import RouterConfig


class _Moe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.router = RouterConfig(num_experts=8, top_k=2)
        self.experts = nn.Linear(16, 64, bias=False)  # stands in for 8 stacked experts: 1024 floats
        self.shared = nn.Linear(16, 16, bias=False)


class _Model(nn.Module):
    def __init__(self, tied: bool, fast_head: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.mlp = _Moe()
        self.lm_head = None if tied else nn.Linear(16, 100, bias=False)
        if fast_head:
            self.fast_head = nn.Module()
            self.fast_head.register_buffer("qweight", torch.zeros(100, 16, dtype=torch.uint8))


def test_experts_count_at_top_k_the_embedding_at_one_row_and_the_head_once():
    parts = model_bytes_per_token(_Model(tied=True, fast_head=False))
    assert parts["routed experts"] == 64 * 16 * 4 * 2 / 8
    assert parts["embedding row"] == 16 * 4
    assert parts["head"] == 100 * 16 * 4  # tied: the head reads the whole embedding
    assert parts["rest"] == 16 * 16 * 4
    # A quantized head copy is what the head reads; the float lm_head is not read.
    parts = model_bytes_per_token(_Model(tied=False, fast_head=True))
    assert parts["head"] == 100 * 16 and parts["embedding row"] == 16 * 4
    assert model_bytes_per_token(_Model(tied=False, fast_head=False))["head"] == 100 * 16 * 4
