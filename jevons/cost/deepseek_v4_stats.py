"""DeepSeek-V4's cost figures, read off its config.json (cost/model_stats.py
turns them into its ModelStats; this module imports nothing from it).

Parameters are counted tensor by tensor the way transformers' DeepseekV4
modules lay them out (tests check the count against a tiny model's numel).

Attention and its cache differ per layer (`compress_ratios` in the published
configs, `layer_types` in transformers'): every layer attends to a sliding
window of the last `sliding_window` tokens (one shared K=V head of head_dim);
a compressed sparse (CSA, ratio m=4) layer adds one compressed entry per m
tokens plus its indexer's compressed key (index_head_dim) per m tokens, of
which each query attends to the index_topk best; a heavily compressed (HCA,
m'=128) layer adds one entry per m' tokens, all attended.

KV values per token are the compressed entries' share per token, summed over
layers; the window is a per-sequence constant (layers x window x head_dim,
`window_values_per_seq`), not a per-token cost.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"
_RATIO_TO_TYPE = {0: SLIDING, 1: SLIDING, 4: CSA, 128: HCA}


def is_deepseek_v4(cfg: dict[str, Any]) -> bool:
    arch = (cfg.get("architectures") or [""])[0]
    return arch == "DeepseekV4ForCausalLM" or cfg.get("model_type") == "deepseek_v4"


def layer_types(cfg: dict[str, Any]) -> list[str]:
    """Per main layer: transformers' names, from `layer_types` or the published
    `compress_ratios` (whose extra trailing entry is the MTP layer's)."""
    n = int(cfg["num_hidden_layers"])
    if cfg.get("layer_types"):
        return list(cfg["layer_types"][:n])
    ratios = cfg.get("compress_ratios")
    if ratios:
        rates = _rates(cfg)
        by_rate = {0: SLIDING, 1: SLIDING, rates[CSA]: CSA, rates[HCA]: HCA}
        return [by_rate.get(int(r), _RATIO_TO_TYPE.get(int(r), SLIDING)) for r in ratios[:n]]
    # transformers' default: two HCA layers, then CSA / HCA alternating.
    return [HCA] * min(n, 2) + [CSA if i % 2 else HCA for i in range(max(n - 2, 0))]


def _rates(cfg: dict[str, Any]) -> dict[str, int]:
    rates = {CSA: 4, HCA: 128}
    rates.update(cfg.get("compress_rates") or {})
    return rates


@dataclass(frozen=True)
class V4Attention:
    """What V4's mixed attention reads and keeps, for ModelStats to cost."""

    num_layers: int
    num_heads: int
    head_dim: int
    sliding_window: int
    csa_layers: int
    hca_layers: int
    csa_rate: int
    hca_rate: int
    index_heads: int
    index_head_dim: int
    index_topk: int

    @property
    def kv_values_per_token(self) -> float:
        """Compressed entries (and CSA's indexer keys) per token, all layers."""
        return self.csa_layers * (self.head_dim + self.index_head_dim) / self.csa_rate + (
            self.hca_layers * self.head_dim / self.hca_rate
        )

    @property
    def window_values_per_seq(self) -> int:
        """The sliding windows, all layers: a per-sequence constant."""
        return self.num_layers * self.sliding_window * self.head_dim

    def attn_flops_per_token(self, context: float) -> float:
        """Scores + weighted sum (2 x head_dim per head per attended entry)
        over the window and the compressed entries a query reads, plus the CSA
        indexer's scoring of every compressed key."""
        window = min(context, self.sliding_window)
        csa = context / self.csa_rate
        if self.index_topk:
            csa = min(csa, self.index_topk)
        attended = self.num_layers * window + self.csa_layers * csa + self.hca_layers * context / self.hca_rate
        scoring = self.csa_layers * self.index_heads * self.index_head_dim * context / self.csa_rate
        return 2.0 * (self.num_heads * 2 * self.head_dim * attended + scoring)


@dataclass(frozen=True)
class V4Counts:
    total: int
    embedding: int
    dense: int
    expert: int
    experts: int
    top_k: int
    mtp: int
    heads: int
    head_dim: int
    attention: V4Attention


def deepseek_v4_counts(cfg: dict[str, Any]) -> V4Counts:
    h, n = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    heads, d = int(cfg["num_attention_heads"]), int(cfg["head_dim"])
    q = int(cfg["q_lora_rank"])
    g, r = int(cfg["o_groups"]), int(cfg["o_lora_rank"])
    ih, idim = int(cfg["index_n_heads"]), int(cfg["index_head_dim"])
    nhc = int(cfg.get("hc_mult") or 1)
    experts, k = int(cfg["n_routed_experts"]), int(cfg["num_experts_per_tok"])
    inter, shared = int(cfg["moe_intermediate_size"]), int(cfg.get("n_shared_experts") or 0)
    vocab, window = int(cfg["vocab_size"]), int(cfg.get("sliding_window") or 128)
    types = layer_types(cfg)
    rates = _rates(cfg)
    m4, m128 = int(rates[CSA]), int(rates[HCA])

    # sinks, q_a (+norm), q_b, kv_proj (+norm), grouped o_a, o_b
    attn = heads + h * q + q + q * heads * d + h * d + d + r * heads * d + g * r * h
    # CSA: two overlapping series (2 x head_dim) of kv and gate, a per-position
    # bias, a norm; its indexer has the same compressor at index_head_dim plus
    # its query projection (from the query bottleneck) and head weights.
    csa = (m4 * 2 * d + 2 * 2 * d * h + d) + (m4 * 2 * idim + 2 * 2 * idim * h + idim + q * ih * idim + h * ih)
    hca = m128 * d + 2 * d * h + d
    hc = 2 * ((2 + nhc) * nhc * nhc * h + (2 + nhc) * nhc + 3)  # attention's and the MLP's mHC
    expert = 3 * h * inter
    router = experts * h  # hash layers route by a token table (a buffer); the others add a bias buffer
    layer_fixed = attn + 2 * h + hc + router + shared * expert
    n_csa, n_hca = types.count(CSA), types.count(HCA)
    dense = n * layer_fixed + n_csa * csa + n_hca * hca + h + (nhc * nhc * h + nhc + 1) + vocab * h
    total = vocab * h + dense + n * experts * expert
    # MTP (not served): one sliding-window layer, its two input norms and the
    # 2H -> H projection; approximate (the checkpoint's extra norms and hc head
    # are a few thousand parameters).
    mtp = int(cfg.get("num_nextn_predict_layers") or 0) * (layer_fixed + experts * expert + 2 * h * h + 2 * h)

    shape = V4Attention(
        num_layers=n, num_heads=heads, head_dim=d, sliding_window=window, csa_layers=n_csa, hca_layers=n_hca,
        csa_rate=m4, hca_rate=m128, index_heads=ih, index_head_dim=idim, index_topk=int(cfg.get("index_topk") or 0),
    )
    return V4Counts(total=total, embedding=vocab * h, dense=dense, expert=expert, experts=experts, top_k=k,
                    mtp=mtp, heads=heads, head_dim=d, attention=shape)
