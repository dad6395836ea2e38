"""Config-only model presets: published Hugging Face config.json contents, no weights.

They let the planner (`jevons plan deepseek-v3`), tests and dummy-weight runs know a
model's exact shape without downloading anything. Each dict is the config.json that
the model's publisher put on the Hugging Face Hub, key for key; nothing is derived
here. `get_preset` hands out a deep copy so no caller can change the table.
"""
from __future__ import annotations

import copy
from typing import Any

from jevons.loader.presets_deepseek_sparse import deepseek_v4_flash, deepseek_v4_pro, deepseek_v32

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
    "deepseek-v3.2": deepseek_v32(_deepseek_v3("4.44.2")),
    # deepseek-ai/DeepSeek-V4-Flash: sliding-window + compressed attention, mHC (284B, 13B active)
    "deepseek-v4-flash": deepseek_v4_flash(),
    # deepseek-ai/DeepSeek-V4-Pro: the same design at 1.6T (49B active)
    "deepseek-v4-pro": deepseek_v4_pro(),
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
