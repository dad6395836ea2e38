"""Config-only model presets: published Hugging Face config.json contents, no weights.

They let the planner (`jevons plan deepseek-v3`), tests and dummy-weight runs know a
model's exact shape without downloading anything. Each dict is the config.json that
the model's publisher put on the Hugging Face Hub, key for key; nothing is derived
here. `get_preset` hands out a deep copy so no caller can change the table.
"""
from __future__ import annotations

import copy
from typing import Any

# DeepSeek-V3's YaRN: 4K pre-training context stretched 40x to 160K.
_DEEPSEEK_V3_YARN: dict[str, Any] = {
    "beta_fast": 32,
    "beta_slow": 1,
    "factor": 40,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "original_max_position_embeddings": 4096,
    "type": "yarn",
}

# DeepSeek-V2 and V2-Lite publish a different attention temperature (mscale 0.707).
_DEEPSEEK_V2_YARN: dict[str, Any] = {
    "beta_fast": 32,
    "beta_slow": 1,
    "factor": 40,
    "mscale": 0.707,
    "mscale_all_dim": 0.707,
    "original_max_position_embeddings": 4096,
    "type": "yarn",
}

# Llama 3.1's frequency-dependent RoPE scaling, used by both R1-Distill-Llama models.
_LLAMA31_ROPE: dict[str, Any] = {
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}


def _deepseek_v3(transformers_version: str) -> dict[str, Any]:
    """deepseek-ai/DeepSeek-V3 and DeepSeek-R1: one architecture, two checkpoints.
    The weights ship in FP8 (e4m3, 128x128 block scales), hence quantization_config."""
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_deepseek.DeepseekV3Config",
            "AutoModel": "modeling_deepseek.DeepseekV3Model",
            "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM",
        },
        "bos_token_id": 0,
        "eos_token_id": 1,
        "ep_size": 1,
        "first_k_dense_replace": 3,
        "hidden_act": "silu",
        "hidden_size": 7168,
        "initializer_range": 0.02,
        "intermediate_size": 18432,
        "kv_lora_rank": 512,
        "max_position_embeddings": 163840,
        "model_type": "deepseek_v3",
        "moe_intermediate_size": 2048,
        "moe_layer_freq": 1,
        "n_group": 8,
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 128,
        "num_experts_per_tok": 8,
        "num_hidden_layers": 61,
        "num_key_value_heads": 128,
        "num_nextn_predict_layers": 1,
        "q_lora_rank": 1536,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "quantization_config": {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [128, 128],
        },
        "rms_norm_eps": 1e-06,
        "rope_scaling": dict(_DEEPSEEK_V3_YARN),
        "rope_theta": 10000,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "tie_word_embeddings": False,
        "topk_group": 4,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "transformers_version": transformers_version,
        "use_cache": True,
        "v_head_dim": 128,
        "vocab_size": 129280,
    }


def _deepseek_v32() -> dict[str, Any]:
    """deepseek-ai/DeepSeek-V3.2-Exp (and V3.2, the same shape): V3 plus the
    lightning indexer of DeepSeek Sparse Attention (64 heads x 128 dims, top
    2,048 tokens). No auto_map: the repository ships no remote code. FP8
    weights with power-of-two (ue8m0) block scales."""
    cfg = _deepseek_v3("4.44.2")
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


def _deepseek_v4_flash() -> dict[str, Any]:
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


def _deepseek_v4_pro() -> dict[str, Any]:
    """deepseek-ai/DeepSeek-V4-Pro (1.6T total, 49B active, 1M context): 61
    layers, two heavily compressed, then compressed sparse and heavily
    compressed alternating (the last entry of `compress_ratios` is the MTP
    layer's); FP8 weights with FP4 routed experts (`expert_dtype`). Keys as
    the config.json is reproduced in public code (no hub access here)."""
    cfg = _deepseek_v4_flash()
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


def _deepseek_v2(lite: bool) -> dict[str, Any]:
    """deepseek-ai/DeepSeek-V2 (236B) and DeepSeek-V2-Lite (16B). Lite has no
    query compression (q_lora_rank null) and a plain greedy router."""
    cfg: dict[str, Any] = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_deepseek.DeepseekV2Config",
            "AutoModel": "modeling_deepseek.DeepseekV2Model",
            "AutoModelForCausalLM": "modeling_deepseek.DeepseekV2ForCausalLM",
        },
        "aux_loss_alpha": 0.001,
        "bos_token_id": 100000,
        "eos_token_id": 100001,
        "ep_size": 1,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": 5120,
        "initializer_range": 0.02,
        "intermediate_size": 12288,
        "kv_lora_rank": 512,
        "max_position_embeddings": 163840,
        "model_type": "deepseek_v2",
        "moe_intermediate_size": 1536,
        "moe_layer_freq": 1,
        "n_group": 8,
        "n_routed_experts": 160,
        "n_shared_experts": 2,
        "norm_topk_prob": False,
        "num_attention_heads": 128,
        "num_experts_per_tok": 6,
        "num_hidden_layers": 60,
        "num_key_value_heads": 128,
        "pretraining_tp": 1,
        "q_lora_rank": 1536,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "rms_norm_eps": 1e-06,
        "rope_scaling": dict(_DEEPSEEK_V2_YARN),
        "rope_theta": 10000,
        "routed_scaling_factor": 16.0,
        "scoring_func": "softmax",
        "seq_aux": True,
        "tie_word_embeddings": False,
        "topk_group": 3,
        "topk_method": "group_limited_greedy",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.39.3",
        "use_cache": True,
        "v_head_dim": 128,
        "vocab_size": 102400,
    }
    if lite:
        cfg.update(
            hidden_size=2048,
            intermediate_size=10944,
            moe_intermediate_size=1408,
            n_group=1,
            n_routed_experts=64,
            num_attention_heads=16,
            num_hidden_layers=27,
            num_key_value_heads=16,
            q_lora_rank=None,
            routed_scaling_factor=1.0,
            topk_group=1,
            topk_method="greedy",
            transformers_version="4.33.1",
        )
    return cfg


def _qwen2(**shape: Any) -> dict[str, Any]:
    """A Qwen2ForCausalLM config.json; `shape` carries the per-model values."""
    cfg: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "model_type": "qwen2",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
    }
    cfg.update(shape)
    return dict(sorted(cfg.items()))


def _llama(**shape: Any) -> dict[str, Any]:
    """A LlamaForCausalLM config.json; `shape` carries the per-model values."""
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "model_type": "llama",
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }
    cfg.update(shape)
    return dict(sorted(cfg.items()))


PRESETS: dict[str, dict[str, Any]] = {
    # deepseek-ai/DeepSeek-V3 (671B total, 37B active; +14B MTP module)
    "deepseek-v3": _deepseek_v3("4.33.1"),
    # deepseek-ai/DeepSeek-R1: the V3 architecture, RL-trained for reasoning
    "deepseek-r1": _deepseek_v3("4.46.3"),
    # deepseek-ai/DeepSeek-V3.2-Exp: V3 + DeepSeek Sparse Attention (671B, 37B active)
    "deepseek-v3.2": _deepseek_v32(),
    # deepseek-ai/DeepSeek-V4-Flash: sliding-window + compressed attention, mHC (284B, 13B active)
    "deepseek-v4-flash": _deepseek_v4_flash(),
    # deepseek-ai/DeepSeek-V4-Pro: the same design at 1.6T (49B active)
    "deepseek-v4-pro": _deepseek_v4_pro(),
    "deepseek-v2": _deepseek_v2(lite=False),
    "deepseek-v2-lite": _deepseek_v2(lite=True),
    # R1 distills into Qwen2.5-Math-1.5B / -7B and Qwen2.5-32B
    "deepseek-r1-distill-qwen-1.5b": _qwen2(
        hidden_size=1536, intermediate_size=8960, max_position_embeddings=131072,
        max_window_layers=21, num_attention_heads=12, num_hidden_layers=28,
        num_key_value_heads=2, rms_norm_eps=1e-06, rope_theta=10000, sliding_window=4096,
        transformers_version="4.44.0", use_mrope=False, vocab_size=151936,
    ),
    "deepseek-r1-distill-qwen-7b": _qwen2(
        hidden_size=3584, intermediate_size=18944, max_position_embeddings=131072,
        max_window_layers=28, num_attention_heads=28, num_hidden_layers=28,
        num_key_value_heads=4, rms_norm_eps=1e-06, rope_theta=10000, sliding_window=4096,
        transformers_version="4.44.0", use_mrope=False, vocab_size=152064,
    ),
    "deepseek-r1-distill-qwen-32b": _qwen2(
        hidden_size=5120, intermediate_size=27648, max_position_embeddings=131072,
        max_window_layers=64, num_attention_heads=40, num_hidden_layers=64,
        num_key_value_heads=8, rms_norm_eps=1e-05, rope_theta=1000000.0,
        sliding_window=131072, transformers_version="4.43.1", vocab_size=152064,
    ),
    # R1 distills into Llama-3.1-8B and Llama-3.3-70B-Instruct
    "deepseek-r1-distill-llama-8b": _llama(
        bos_token_id=128000, eos_token_id=128001, hidden_size=4096,
        intermediate_size=14336, max_position_embeddings=131072, mlp_bias=False,
        num_attention_heads=32, num_hidden_layers=32, num_key_value_heads=8,
        rope_scaling=dict(_LLAMA31_ROPE), rope_theta=500000.0,
        transformers_version="4.43.0.dev0", vocab_size=128256,
    ),
    "deepseek-r1-distill-llama-70b": _llama(
        bos_token_id=128000, eos_token_id=128001, head_dim=128, hidden_size=8192,
        intermediate_size=28672, max_position_embeddings=131072, mlp_bias=False,
        num_attention_heads=64, num_hidden_layers=80, num_key_value_heads=8,
        rope_scaling=dict(_LLAMA31_ROPE), rope_theta=500000.0,
        transformers_version="4.47.0.dev0", vocab_size=128256,
    ),
    # meta-llama/Meta-Llama-3-8B and -70B (8K context, no RoPE scaling)
    "llama-3-8b": _llama(
        bos_token_id=128000, eos_token_id=128001, hidden_size=4096,
        intermediate_size=14336, max_position_embeddings=8192, num_attention_heads=32,
        num_hidden_layers=32, num_key_value_heads=8, rope_scaling=None,
        rope_theta=500000.0, transformers_version="4.40.0.dev0", vocab_size=128256,
    ),
    "llama-3-70b": _llama(
        bos_token_id=128000, eos_token_id=128001, hidden_size=8192,
        intermediate_size=28672, max_position_embeddings=8192, num_attention_heads=64,
        num_hidden_layers=80, num_key_value_heads=8, rope_scaling=None,
        rope_theta=500000.0, transformers_version="4.40.0.dev0", vocab_size=128256,
    ),
    # Qwen/Qwen2-7B (base)
    "qwen2-7b": _qwen2(
        hidden_size=3584, intermediate_size=18944, max_position_embeddings=131072,
        max_window_layers=28, num_attention_heads=28, num_hidden_layers=28,
        num_key_value_heads=4, rms_norm_eps=1e-06, rope_theta=1000000.0,
        sliding_window=131072, transformers_version="4.37.2", vocab_size=152064,
    ),
    # HuggingFaceTB/SmolLM2-135M-Instruct: the engine's default CPU model
    "smollm2-135m-instruct": _llama(
        bos_token_id=1, eos_token_id=2, head_dim=64, hidden_size=576,
        initializer_range=0.041666666666666664, intermediate_size=1536,
        is_llama_config=True, max_position_embeddings=8192, mlp_bias=False,
        num_attention_heads=9, num_hidden_layers=30, num_key_value_heads=3,
        pad_token_id=2, rope_interleaved=False, rope_scaling=None, rope_theta=100000,
        tie_word_embeddings=True, transformers_version="4.42.3", vocab_size=49152,
    ),
}


def list_presets() -> list[str]:
    """Known preset names, sorted."""
    return sorted(PRESETS)


def get_preset(name: str) -> dict[str, Any]:
    """The config.json dict for a preset name (case-insensitive). Returns a deep copy."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(list_presets())}")
    return copy.deepcopy(PRESETS[key])
