"""What a model costs to run, read off its config.json: parameters, KV bytes, FLOPs.

Everything the planner knows about a model comes from here, counted tensor by
tensor the way the checkpoints lay them out (so the totals match the published
parameter counts: Qwen2-7B 7.62B, DeepSeek-V3 671B + 14B MTP). Two attention
families matter:

- MHA/GQA (Llama, Qwen2): the cache holds K and V for every KV head.
- MLA (DeepSeek V2/V3): the cache holds one compressed latent of
  kv_lora_rank + qk_rope_head_dim values per token per layer, shared by all heads.
  DeepSeek-V3.2's sparse attention adds its lightning indexer's key
  (index_head_dim values) per token per layer, and each query attends to at
  most index_topk tokens (while the indexer scores them all).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jevons.cost.deepseek_v4_stats import V4Attention, deepseek_v4_counts, is_deepseek_v4


@dataclass(frozen=True)
class ModelStats:
    """Parameter and per-token figures for one model. Counts are parameters, not bytes."""

    architecture: str
    num_layers: int
    total_params: int           # main model, as stored (MTP module excluded; tied head once)
    embedding_params: int       # the input table: only one row per token is ever read
    lm_head_params: int         # the output head (the input table itself when tied)
    dense_params: int           # everything outside routed experts and the input table
    expert_params: int          # one routed expert (gate + up + down)
    moe_layers: int
    routed_experts: int         # per MoE layer; 0 for dense models
    experts_per_token: int
    mtp_params: int             # DeepSeek-V3's multi-token-prediction module, if any
    is_mla: bool
    kv_values_per_token_layer: int   # cached values per token per layer
    mha_kv_values_per_token_layer: int  # what full per-head K+V would need (for comparison)
    num_heads: int
    prefill_attn_dims: int      # QK^T width + PV width per head, as computed in prefill
    decode_attn_dims: int       # the same in decode (MLA decodes in the latent space)
    native_precision: str       # "fp8" when the checkpoint ships FP8 weights, else "bf16"
    index_topk: int = 0         # DeepSeek Sparse Attention: tokens each query attends to (0: all)
    index_score_dims: int = 0   # its indexer's heads x head dim, scored against every context token
    v4: V4Attention | None = None  # DeepSeek-V4's per-layer mix of window and compressed attention
    kv_fixed_bytes_per_token_layer: int = 0  # cached whatever the KV dtype: V3.2's FP8 indexer key + scales

    @property
    def attention_kind(self) -> str:
        """How `jevons plan` names the attention."""
        if self.v4 is not None:
            return "sliding window + compressed (CSA/HCA)"
        if self.is_mla:
            return "MLA + DSA (sparse)" if self.index_topk else "MLA"
        return "MHA/GQA"

    @property
    def is_moe(self) -> bool:
        return self.routed_experts > 0

    @property
    def active_params(self) -> int:
        """Parameters one token multiplies through (the input table excluded: a
        lookup is not a matmul)."""
        return self.dense_params + self.moe_layers * self.experts_per_token * self.expert_params

    def kv_bytes_per_token(self, dtype_bytes: float) -> float:
        if self.v4 is not None:  # compressed entries only: the window is a per-sequence constant
            return self.v4.kv_values_per_token * dtype_bytes
        return self.num_layers * (self.kv_values_per_token_layer * dtype_bytes + self.kv_fixed_bytes_per_token_layer)

    def kv_bytes_per_seq(self, tokens: float, dtype_bytes: float) -> float:
        """The cache one sequence of `tokens` tokens holds (V4 adds its
        sliding windows, which stop growing at the window size)."""
        per_token = self.kv_bytes_per_token(dtype_bytes) * tokens
        if self.v4 is None:
            return per_token
        a = self.v4
        return per_token + a.num_layers * min(tokens, a.sliding_window) * a.head_dim * dtype_bytes

    def mha_kv_bytes_per_token(self, dtype_bytes: float) -> float:
        return self.num_layers * self.mha_kv_values_per_token_layer * dtype_bytes

    def experts_touched(self, tokens: int) -> float:
        """Expected distinct routed experts per MoE layer that `tokens` tokens hit,
        under uniform routing: E * (1 - (1 - k/E)^tokens). One token touches k."""
        if not self.is_moe or tokens <= 0:
            return 0.0
        e, k = self.routed_experts, self.experts_per_token
        return e * (1.0 - (1.0 - k / e) ** tokens)

    def params_read(self, tokens: int) -> float:
        """Weights a forward step over `tokens` tokens must stream from memory:
        every dense weight once (shared by the batch) plus each touched expert once."""
        return self.dense_params + self.moe_layers * self.experts_touched(tokens) * self.expert_params

    def attn_flops_per_token(self, context: float, decode: bool) -> float:
        """Attention-score and weighted-sum FLOPs for one token that attends to
        `context` earlier tokens (the weights' FLOPs are 2 x active params)."""
        if self.v4 is not None:
            return self.v4.attn_flops_per_token(context)
        dims = self.decode_attn_dims if decode else self.prefill_attn_dims
        attended = min(context, self.index_topk) if self.index_topk else context
        return 2.0 * self.num_layers * (self.num_heads * dims * attended + self.index_score_dims * context)


def _mlp(hidden: int, inter: int) -> int:
    return 3 * hidden * inter  # SwiGLU: gate, up, down


def _mla_attention(cfg: dict[str, Any], hidden: int, heads: int) -> int:
    rope, nope, v = cfg["qk_rope_head_dim"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    kv_rank, q_rank = cfg["kv_lora_rank"], cfg.get("q_lora_rank")
    qk = nope + rope
    q = hidden * heads * qk if not q_rank else hidden * q_rank + q_rank + q_rank * heads * qk
    kv = hidden * (kv_rank + rope) + kv_rank + kv_rank * heads * (nope + v)
    return q + kv + heads * v * hidden


def _dsa_indexer(cfg: dict[str, Any], hidden: int) -> int:
    """DeepSeek-V3.2's lightning indexer: wq_b (from the query bottleneck), wk,
    its LayerNorm (weight and bias) and the per-head weights_proj."""
    if not cfg.get("index_topk"):
        return 0
    ih, idim = int(cfg["index_n_heads"]), int(cfg["index_head_dim"])
    return int(cfg["q_lora_rank"]) * ih * idim + hidden * idim + 2 * idim + hidden * ih


def _gqa_attention(cfg: dict[str, Any], hidden: int, heads: int, kv_heads: int, head_dim: int) -> int:
    arch = (cfg.get("architectures") or [""])[0]
    bias = bool(cfg.get("attention_bias")) or arch.startswith("Qwen2")
    q, kv = heads * head_dim, kv_heads * head_dim
    return hidden * (q + 2 * kv) + (q + 2 * kv if bias else 0) + q * hidden


def _native_precision(cfg: dict[str, Any]) -> str:
    quant = cfg.get("quantization_config") or {}
    return "fp8" if quant.get("quant_method") == "fp8" else "bf16"


def model_stats(cfg: dict[str, Any]) -> ModelStats:
    """Count a Hugging Face config.json (Llama, Qwen2, DeepSeek V2/V3 and alike)."""
    arch = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
    if is_deepseek_v4(cfg):
        return _deepseek_v4(cfg)
    hidden, layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    vocab = int(cfg["vocab_size"])
    is_mla = cfg.get("kv_lora_rank") is not None

    experts = int(cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    top_k = int(cfg.get("num_experts_per_tok") or 0) if experts else 0
    moe_inter = int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"])
    shared = int(cfg.get("n_shared_experts") or 0)
    first_dense = int(cfg.get("first_k_dense_replace") or 0)
    freq = int(cfg.get("moe_layer_freq") or 1)
    moe_layers = sum(1 for i in range(layers) if experts and i >= first_dense and i % freq == 0)

    index_topk = int(cfg.get("index_topk") or 0) if is_mla else 0
    index_dims = int(cfg["index_head_dim"]) if index_topk else 0
    # An FP8 checkpoint's indexer key is cached in e4m3 with a float32 scale per
    # 128 dims (models/layers/dsa_indexer.py): bytes, not values of the KV dtype.
    index_fp8 = bool(index_topk) and _native_precision(cfg) == "fp8"
    index_fixed = index_dims + 4 * -(-index_dims // 128) if index_fp8 else 0
    if is_mla:
        attn = _mla_attention(cfg, hidden, heads) + _dsa_indexer(cfg, hidden)
        rope, nope, v = cfg["qk_rope_head_dim"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
        kv_rank = int(cfg["kv_lora_rank"])
        kv_values = kv_rank + rope + (0 if index_fp8 else index_dims)  # the latent, plus V3.2's indexer key
        mha_values = heads * (nope + rope) + heads * v
        # Prefill expands the latent to per-head K (nope+rope) and V; decode absorbs the
        # up-projections and attends in the latent (kv_rank+rope for scores, kv_rank for values).
        prefill_dims, decode_dims = nope + rope + v, kv_rank + rope + kv_rank
    else:
        attn = _gqa_attention(cfg, hidden, heads, kv_heads, head_dim)
        kv_values = 2 * kv_heads * head_dim
        mha_values = 2 * heads * head_dim
        prefill_dims = decode_dims = 2 * head_dim

    norms = 2 * hidden
    dense_mlp = _mlp(hidden, int(cfg["intermediate_size"]))
    expert = _mlp(hidden, moe_inter)
    # Router: one logit per expert; noaux_tc adds a per-expert bias (e_score_correction_bias).
    router = experts * hidden + (experts if cfg.get("topk_method") == "noaux_tc" else 0)
    moe_fixed = router + shared * expert  # shared experts run on every token
    dense_layers = layers - moe_layers

    embedding = vocab * hidden
    # The output head multiplies (and streams) a vocab x hidden matrix every step even
    # when it is tied to the input table; tying only saves it from being stored twice.
    lm_head = vocab * hidden
    tied = bool(cfg.get("tie_word_embeddings"))
    dense = (layers * (attn + norms) + dense_layers * dense_mlp + moe_layers * moe_fixed
             + hidden + lm_head)  # + final norm
    total = embedding + dense - (lm_head if tied else 0) + moe_layers * experts * expert

    mtp = 0
    for _ in range(int(cfg.get("num_nextn_predict_layers") or 0)):
        # enorm, hnorm, eh_proj (2H -> H), one MoE decoder layer, shared_head norm, and the
        # checkpoint's own copies of the embedding and output head.
        mtp += 3 * hidden + 2 * hidden * hidden + attn + norms + moe_fixed + experts * expert
        mtp += 2 * embedding

    return ModelStats(
        architecture=arch, num_layers=layers, total_params=total, embedding_params=embedding,
        lm_head_params=lm_head, dense_params=dense, expert_params=expert if experts else 0,
        moe_layers=moe_layers, routed_experts=experts, experts_per_token=top_k, mtp_params=mtp,
        is_mla=is_mla, kv_values_per_token_layer=kv_values, mha_kv_values_per_token_layer=mha_values,
        num_heads=heads, prefill_attn_dims=prefill_dims, decode_attn_dims=decode_dims,
        native_precision=_native_precision(cfg), index_topk=index_topk,
        index_score_dims=int(cfg["index_n_heads"]) * index_dims if index_topk else 0,
        kv_fixed_bytes_per_token_layer=index_fixed,
    )


def _deepseek_v4(cfg: dict[str, Any]) -> ModelStats:
    c = deepseek_v4_counts(cfg)
    return ModelStats(
        architecture="DeepseekV4ForCausalLM", num_layers=c.attention.num_layers, total_params=c.total,
        embedding_params=c.embedding, lm_head_params=c.embedding, dense_params=c.dense, expert_params=c.expert,
        moe_layers=c.attention.num_layers, routed_experts=c.experts, experts_per_token=c.top_k, mtp_params=c.mtp,
        is_mla=False, kv_values_per_token_layer=0, mha_kv_values_per_token_layer=2 * c.heads * c.head_dim,
        num_heads=c.heads, prefill_attn_dims=2 * c.head_dim, decode_attn_dims=2 * c.head_dim,
        native_precision=_native_precision(cfg), index_topk=c.attention.index_topk,
        index_score_dims=c.attention.index_heads * c.attention.index_head_dim, v4=c.attention,
    )
