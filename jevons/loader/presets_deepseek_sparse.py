"""Config-only presets for DeepSeek's sparse-attention generations: V3.2
(DeepSeek Sparse Attention over V3's MLA) and V4 (compressed sparse and
heavily compressed attention). Split from presets.py, which lists them."""
from __future__ import annotations

from typing import Any


def deepseek_v32(v3: dict[str, Any]) -> dict[str, Any]:
    """deepseek-ai/DeepSeek-V3.2-Exp (and V3.2, the same shape): V3 plus the
    lightning indexer of DeepSeek Sparse Attention (64 heads x 128 dims, top
    2,048 tokens). No auto_map: the repository ships no remote code. FP8
    weights with power-of-two (ue8m0) block scales."""
    cfg = v3  # V3's config (presets.py), as published with 4.44.2
    del cfg["auto_map"]
    cfg.update({
        "architectures": ["DeepseekV32ForCausalLM"],
        "index_head_dim": 128,
        "index_n_heads": 64,
        "index_topk": 2048,
        "model_type": "deepseek_v32",
    })
    cfg["quantization_config"]["scale_fmt"] = "ue8m0"
    return dict(sorted(cfg.items()))


def deepseek_v4_flash() -> dict[str, Any]:
    """deepseek-ai/DeepSeek-V4-Flash (284B total, 13B active, 1M context): 43
    layers, two sliding-window-only, then compressed sparse (ratio 4) and
    heavily compressed (ratio 128) attention alternating; `compress_ratios`
    has one more entry, for the MTP layer. mHC with 4 streams, a sqrtsoftplus
    router, hash routing in the first 3 layers. Keys as the Flash-Base
    config.json is reproduced in public code (no hub access here)."""
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "compress_ratios": [0, 0] + [4, 128] * 20 + [4, 0],
        "compress_rope_theta": 160000,
        "eos_token_id": 1,
        "hc_eps": 1e-06,
        "hc_mult": 4,
        "hc_sinkhorn_iters": 20,
        "head_dim": 512,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "index_head_dim": 128,
        "index_n_heads": 64,
        "index_topk": 512,
        "initializer_range": 0.02,
        "max_position_embeddings": 1048576,
        "model_type": "deepseek_v4",
        "moe_intermediate_size": 2048,
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 64,
        "num_experts_per_tok": 6,
        "num_hash_layers": 3,
        "num_hidden_layers": 43,
        "num_key_value_heads": 1,
        "num_nextn_predict_layers": 1,
        "o_groups": 8,
        "o_lora_rank": 1024,
        "q_lora_rank": 1024,
        "qk_rope_head_dim": 64,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 16, "original_max_position_embeddings": 65536,
                         "type": "yarn"},
        "rope_theta": 10000,
        "routed_scaling_factor": 1.5,
        "scoring_func": "sqrtsoftplus",
        "sliding_window": 128,
        "swiglu_limit": 10.0,
        "tie_word_embeddings": False,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.1",
        "use_cache": True,
        "vocab_size": 129280,
    }


def deepseek_v4_pro() -> dict[str, Any]:
    """deepseek-ai/DeepSeek-V4-Pro (1.6T total, 49B active, 1M context): 61
    layers, two heavily compressed, then compressed sparse and heavily
    compressed alternating (the last entry of `compress_ratios` is the MTP
    layer's); FP8 weights with FP4 routed experts (`expert_dtype`). Keys as
    the config.json is reproduced in public code (no hub access here)."""
    cfg = deepseek_v4_flash()
    cfg.update({
        "compress_ratios": [128, 128] + [4, 128] * 29 + [4, 0],
        "expert_dtype": "fp4",
        "hidden_size": 7168,
        "index_topk": 1024,
        "moe_intermediate_size": 3072,
        "n_routed_experts": 384,
        "num_attention_heads": 128,
        "num_hidden_layers": 61,
        "o_groups": 16,
        "q_lora_rank": 1536,
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
        "routed_scaling_factor": 2.5,
    })
    return dict(sorted(cfg.items()))
