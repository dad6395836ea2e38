"""AttentionMetadata.build's decode-only shortcut gives the general path's tensors."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from jevons.kernels.attention_metadata import AttentionMetadata


@pytest.mark.parametrize("context_lens", [[0], [5], [200], [16, 3, 31, 0, 47], [15, 16, 17]])
def test_the_decode_shortcut_matches_the_general_path(context_lens):
    g = torch.Generator().manual_seed(len(context_lens))
    block_size = 16
    width = max(context_lens) // block_size + 1
    tables = torch.randint(0, 1000, (len(context_lens), width), generator=g)
    fast = AttentionMetadata.build([1] * len(context_lens), context_lens, tables, block_size)
    general = AttentionMetadata._build_general([1] * len(context_lens), context_lens, tables, block_size, "cpu")
    for field in dataclasses.fields(AttentionMetadata):
        a, b = getattr(fast, field.name), getattr(general, field.name)
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), field.name
        else:
            assert a == b, field.name
