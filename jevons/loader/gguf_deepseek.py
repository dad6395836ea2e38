"""llama.cpp's `deepseek2` architecture (DeepSeek V2, V2-Lite, V2.5, V3, R1)
seen as a Hugging Face DeepseekV2/V3 checkpoint.

What llama.cpp's converter (convert_hf_to_gguf.py, DeepseekV2Model) changes
on the way in, and how it is undone here:
- MLA: `kv_b_proj` is split per head into `attn_k_b` (the nope rows,
  transposed: [H, R, Dn]) and `attn_v_b` ([H, Dv, R]) so llama.cpp can absorb
  them; older converters wrote the fused `attn_kv_b`. Both load as HF's
  kv_b_proj [H * (Dn + Dv), R].
- `head_count_kv` is 1 (MLA as MQA); the real key/value widths are
  `key_length_mla` / `value_length_mla` (older files: `key_length` /
  `value_length`, before those keys existed).
- routed experts are one 3-D tensor per projection (`ffn_gate_exps`
  [E, I, H], ...); they load as jevons's stacked experts in one copy.
- router: `expert_gating_func` (1 softmax = V2, 2 sigmoid = V3; absent in
  old V2 files, which llama.cpp reads as softmax), `exp_probs_b` (V3's
  selection bias), `expert_weights_norm`, `expert_weights_scale`.
- YaRN: `rope.scaling.yarn_log_multiplier` holds 0.1 * mscale_all_dim;
  DeepSeek's released configs have mscale == mscale_all_dim, and the file
  keeps only the one.
The rope dimensions are not permuted (llama.cpp rotates deepseek2 in
interleaved pairs, as the HF checkpoints store them)."""
from __future__ import annotations

from typing import Any

import torch

from jevons.loader.gguf_reader import GGUFFile

# GGUF block tensor -> HF module path, for the names only DeepSeek has.
DEEPSEEK_BLOCK_NAMES = {
    "attn_q_a": "self_attn.q_a_proj",
    "attn_q_a_norm": "self_attn.q_a_layernorm",
    "attn_q_b": "self_attn.q_b_proj",
    "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
    "attn_kv_a_norm": "self_attn.kv_a_layernorm",
    "attn_kv_b": "self_attn.kv_b_proj",
    "attn_k_b": "self_attn.kv_b_proj",  # fused with attn_v_b (split_kv_b)
    "ffn_gate_inp": "mlp.gate",
    "exp_probs_b": "mlp.gate.e_score_correction",  # + "_bias": HF's buffer name
    # 3-D [E, out, in]; jevons's DeepSeek loader takes them stacked.
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
    "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
    "ffn_up_shexp": "mlp.shared_experts.up_proj",
    "ffn_down_shexp": "mlp.shared_experts.down_proj",
}

# Read together with attn_k_b, never on their own.
CONSUMED_WITH_K_B = "attn_v_b"

_SOFTMAX, _SIGMOID = 1, 2  # gguf.ExpertGatingFuncType


def fuse_kv_b(k_b: torch.Tensor, v_b: torch.Tensor) -> torch.Tensor:
    """attn_k_b [H, R, Dn] and attn_v_b [H, Dv, R] -> kv_b_proj [H * (Dn + Dv), R]:
    per head, the Dn nope rows then the Dv value rows (HF's order)."""
    heads, rank = k_b.shape[0], k_b.shape[1]
    if v_b.shape[0] != heads or v_b.shape[2] != rank:
        raise ValueError(f"attn_k_b {tuple(k_b.shape)} and attn_v_b {tuple(v_b.shape)} do not pair up")
    return torch.cat([k_b.transpose(1, 2), v_b.to(k_b.dtype)], dim=1).reshape(-1, rank).contiguous()


def _yarn(f: GGUFFile) -> dict[str, Any] | None:
    if str(f.arch_key("rope.scaling.type", "none")) != "yarn":
        return None
    factor = f.arch_key("rope.scaling.factor")
    if factor is None:
        return None
    s: dict[str, Any] = {"rope_type": "yarn", "type": "yarn", "factor": float(factor)}
    original = f.arch_key("rope.scaling.original_context_length")
    if original is not None:
        s["original_max_position_embeddings"] = int(original)
    log_mul = f.arch_key("rope.scaling.yarn_log_multiplier")
    if log_mul:
        s["mscale"] = s["mscale_all_dim"] = float(log_mul) / 0.1
    for key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
        value = f.arch_key(f"rope.scaling.{key}")
        if value is not None:
            s[hf_key] = float(value)
    return s


def deepseek2_hf_config(f: GGUFFile, base: dict[str, Any]) -> dict[str, Any]:
    """`base` (the keys every architecture shares) plus DeepSeek's own."""
    heads = int(base["num_attention_heads"])
    rope = int(f.arch_key("rope.dimension_count"))
    kv_lora = int(f.arch_key("attention.kv_lora_rank"))
    if f.arch_key("attention.key_length_mla") is not None:
        qk_head, v_head = int(f.arch_key("attention.key_length_mla")), int(f.arch_key("attention.value_length_mla"))
    else:  # files from before MLA-as-MQA: key_length is nope + rope per head
        qk_head, v_head = int(f.arch_key("attention.key_length")), int(f.arch_key("attention.value_length"))
    n_experts = f.arch_key("expert_count")
    gating = int(f.arch_key("expert_gating_func", _SOFTMAX))
    if gating not in (_SOFTMAX, _SIGMOID):
        raise NotImplementedError(f"deepseek2 expert_gating_func {gating} (only softmax and sigmoid are DeepSeek's)")
    # V3's rule (sigmoid + selection bias + group top-2) is the only sigmoid one.
    v3 = gating == _SIGMOID or any(name.endswith("exp_probs_b.bias") for name in f.tensors)
    n_group = int(f.arch_key("expert_group_count") or 1)
    config = dict(base)
    config.update(
        architectures=["DeepseekV3ForCausalLM" if v3 else "DeepseekV2ForCausalLM"],
        model_type="deepseek_v3" if v3 else "deepseek_v2",
        num_key_value_heads=heads,  # the file's 1 is MLA written as MQA
        q_lora_rank=int(f.arch_key("attention.q_lora_rank")) if f.arch_key("attention.q_lora_rank") else None,
        kv_lora_rank=kv_lora,
        qk_rope_head_dim=rope,
        qk_nope_head_dim=qk_head - rope,
        v_head_dim=v_head,
        first_k_dense_replace=int(f.arch_key("leading_dense_block_count", 0)),
        moe_intermediate_size=int(f.arch_key("expert_feed_forward_length", base["intermediate_size"])),
        n_routed_experts=int(n_experts) if n_experts else None,
        num_experts_per_tok=int(f.arch_key("expert_used_count", 0)) or None,
        n_shared_experts=int(f.arch_key("expert_shared_count", 0)),
        routed_scaling_factor=float(f.arch_key("expert_weights_scale", 1.0)),
        norm_topk_prob=bool(f.arch_key("expert_weights_norm", False)),
        scoring_func="sigmoid" if v3 else "softmax",
        topk_method="noaux_tc" if v3 else ("group_limited_greedy" if n_group > 1 else "greedy"),
        n_group=n_group,
        topk_group=int(f.arch_key("expert_group_used_count") or 1),
        rope_scaling=_yarn(f),
        rope_interleave=True,
        moe_layer_freq=1,
        attention_bias=any(name.endswith("attn_kv_a_mqa.bias") for name in f.tensors),
    )
    return config
