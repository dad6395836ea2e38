"""Tiny random DeepSeek-V3.2 checkpoints built with transformers' own classes
(the independent implementation jevons is checked against), shared by the
test_deepseek_v32* files. Nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import torch

from test_deepseek_tiny import V3_BASE
from tiny_models import build_tokenizer

# The indexer is given enough heads that a key whose every head scores <= 0
# (an exact tie at 0 after the ReLU) is rare: tie order at the top-k boundary
# is unspecified in transformers' torch.topk.
V32_BASE = dict(V3_BASE, index_topk=8, index_n_heads=16, index_head_dim=32)


def build_deepseek_v32(path: Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny random DeepseekV32ForCausalLM (with a tokenizer) to path.
    Norm weights and biases (the indexer's LayerNorm has one) and the router's
    selection bias are randomized, so a misplaced tensor cannot hide."""
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    kw = dict(V32_BASE, vocab_size=build_tokenizer(path))
    kw.update(overrides)
    torch.manual_seed(seed)
    model = transformers.DeepseekV32ForCausalLM(transformers.DeepseekV32Config(**kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.2)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.05)
    model.save_pretrained(path)
    return path
