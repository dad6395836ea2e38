"""Tiny random DeepSeek-V4 checkpoints built with transformers' own classes
(the independent implementation jevons is checked against), shared by the
test_deepseek_v4* files. Nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import torch

from tiny_models import build_tokenizer

S, C, H = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"
# Every layer type, a window shorter than the prompts, CSA top-k below the
# number of compressed entries, two hash-routed layers, two residual streams.
# The indexer gets enough heads that exact ReLU ties at zero stay rare.
V4_BASE = dict(
    hidden_size=32, moe_intermediate_size=16, num_hidden_layers=4, num_attention_heads=4, head_dim=16,
    q_lora_rank=24, partial_rotary_factor=0.5, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
    layer_types=[S, C, H, C], compress_rates={C: 2, H: 4}, mlp_layer_types=["hash_moe", "hash_moe", "moe", "moe"],
    o_groups=2, o_lora_rank=8, index_n_heads=12, index_head_dim=16, index_topk=3, sliding_window=5, hc_mult=2,
    hc_sinkhorn_iters=20, swiglu_limit=1.0, routed_scaling_factor=1.5, max_position_embeddings=512,
    eos_token_id=2, bos_token_id=None, tie_word_embeddings=False, initializer_range=0.1,
)


def build_deepseek_v4(path: Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny random DeepseekV4ForCausalLM (with a tokenizer) to path.
    Every parameter transformers initializes to a constant (norms, sinks,
    position biases, mHC weights, the selection bias, the hash table) is
    randomized so that a misplaced tensor cannot hide."""
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    kw = dict(V4_BASE, vocab_size=build_tokenizer(path))
    kw.update(overrides)
    torch.manual_seed(seed)
    model = transformers.DeepseekV4ForCausalLM(transformers.DeepseekV4Config(**kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(("sinks", "position_bias", "base", "scale", "hc_fn", "hc_base", "hc_scale")):
                p.normal_(0, 0.5)
            elif name.endswith(".fn"):
                p.normal_(0, 0.1)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.05)
            elif name.endswith("tid2eid"):
                k, e = b.shape[1], model.config.n_routed_experts
                b.copy_(torch.stack([torch.randperm(e)[:k] for _ in range(b.shape[0])]))
    model.save_pretrained(path)
    return path
