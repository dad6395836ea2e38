"""Write a transformers DeepSeek-V2/V3 model as a GGUF the way llama.cpp's
convert_hf_to_gguf.py (DeepseekV2Model) does: gguf's own tensor-name map,
experts stacked into 3-D `*_exps` tensors, kv_b_proj split into attn_k_b
(transposed) and attn_v_b (or kept fused, as older converters did), the
router and MLA metadata under `deepseek2.*`, 1-D tensors in F32. Written from
the converter's description, for the tests; not a converter."""
from __future__ import annotations

import pathlib
import re
from typing import Any

import numpy as np
import torch

from loader_fixtures import Q, copy_tokenizer_metadata, encode_tensor, gguf
from jevons.loader.gguf_reader import GGUFFile


def _metadata(w: Any, cfg: Any) -> None:
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(1)  # MLA written as MQA
    rope = cfg.rope_parameters
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    if getattr(cfg, "n_group", None):
        w.add_expert_group_count(cfg.n_group)
        w.add_expert_group_used_count(cfg.topk_group)
    v3 = cfg.model_type == "deepseek_v3"
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID if v3 else gguf.ExpertGatingFuncType.SOFTMAX)
    w.add_leading_dense_block_count(cfg.first_k_dense_replace)
    w.add_vocab_size(cfg.vocab_size)
    if cfg.q_lora_rank is not None:
        w.add_q_lora_rank(cfg.q_lora_rank)
    w.add_kv_lora_rank(cfg.kv_lora_rank)
    w.add_key_length(cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    w.add_value_length(cfg.kv_lora_rank)
    w.add_key_length_mla(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
    w.add_value_length_mla(cfg.v_head_dim)
    w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    w.add_expert_count(cfg.n_routed_experts)
    w.add_expert_shared_count(cfg.n_shared_experts or 0)
    w.add_expert_weights_scale(cfg.routed_scaling_factor)
    if cfg.norm_topk_prob:
        w.add_expert_weights_norm(True)
    w.add_rope_dimension_count(cfg.qk_rope_head_dim)
    if rope.get("rope_type") == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        for key, add in (("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
            if rope.get(key) is not None:
                add(float(rope[key]))
        if rope.get("mscale_all_dim"):
            w.add_rope_scaling_yarn_log_mul(0.1 * rope["mscale_all_dim"])
    w.add_file_type(0)


def converted_tensors(model: torch.nn.Module, split_kv_b: bool = True) -> dict[str, torch.Tensor]:
    """llama.cpp tensor name -> tensor (torch order) for the model's state dict."""
    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DEEPSEEK2, cfg.num_hidden_layers)
    state = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        m = re.match(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(\w+)\.weight$", name)
        if m:
            experts.setdefault((int(m.group(1)), m.group(3)), {})[int(m.group(2))] = t
            continue
        if re.match(r"model\.layers\.\d+\.mlp\.experts\.(gate_up_proj|down_proj)$", name):
            # transformers >= 5 keeps experts fused: gate_up [E, 2I, H], down [E, H, I]
            layer = int(name.split(".")[2])
            if name.endswith("gate_up_proj"):
                gate, up = t.chunk(2, dim=1)
                experts[(layer, "gate_proj")] = dict(enumerate(gate))
                experts[(layer, "up_proj")] = dict(enumerate(up))
            else:
                experts[(layer, "down_proj")] = dict(enumerate(t))
            continue
        name = name.replace("e_score_correction_bias", "e_score_correction.bias")
        if name.endswith("kv_b_proj.weight") and split_kv_b:
            heads = cfg.num_attention_heads
            kv_b = t.view(heads, cfg.qk_nope_head_dim + cfg.v_head_dim, t.shape[-1])
            k_b, v_b = kv_b.split([cfg.qk_nope_head_dim, cfg.v_head_dim], dim=1)
            base = names.get_name(name.replace("kv_b_proj", "k_b_proj"), try_suffixes=(".weight",))
            out[base] = k_b.transpose(1, 2).contiguous()
            out[base.replace("attn_k_b", "attn_v_b")] = v_b.contiguous()
            continue
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise KeyError(f"no llama.cpp name for {name}")
        out[gname] = t
    for (layer, proj), per_expert in experts.items():
        stacked = torch.stack([per_expert[e] for e in range(len(per_expert))])
        out[names.get_name(f"model.layers.{layer}.mlp.experts.{proj}.weight", try_suffixes=(".weight",))] = stacked
    return out


def write_deepseek_gguf(
    path: pathlib.Path,
    model: torch.nn.Module,
    split_kv_b: bool = True,
    kind: Any = None,
    tokenizer_from: GGUFFile | None = None,
    chat_template: str | None = None,
) -> dict[str, torch.Tensor]:
    """Write `model` as llama.cpp's converter would; matrices (2-D and 3-D) in
    `kind` where their rows fit its blocks (else F32, as llama-quantize falls
    back), everything else F32. Returns the written tensors by GGUF name."""
    w = gguf.GGUFWriter(str(path), "deepseek2")
    _metadata(w, model.config)
    if tokenizer_from is not None:
        copy_tokenizer_metadata(w, tokenizer_from, pre="deepseek-v3", vocab_limit=model.config.vocab_size)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    tensors = converted_tensors(model, split_kv_b)
    for name, t in tensors.items():
        k = Q.F32
        block = gguf.GGML_QUANT_SIZES[kind][0] if kind is not None else 0
        if kind is not None and t.dim() >= 2 and t.shape[-1] % block == 0 and "ffn_gate_inp" not in name:
            k = kind
        w.add_tensor(name, encode_tensor(np.ascontiguousarray(t.numpy()), k), raw_dtype=k)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors
