"""DeepSeek-V3.2's lightning indexer: the cheap scorer that picks which cached
tokens each query's MLA attends to (DeepSeek Sparse Attention).

Per token it makes
- Hi index queries of Di dims from the MLA query bottleneck (wq_b applied to
  q_a_layernorm(q_a_proj(x)), the same vector MLA's q_b_proj reads),
- one index key of Di dims from the hidden state (wk, then a LayerNorm with
  bias, not an RMSNorm),
- Hi per-head weights from the hidden state (weights_proj), times 1/sqrt(Hi).

The first Dr (= qk_rope_head_dim) dims of queries and key are rotated with the
model's rotary table in rotate-half layout (unlike MLA's interleaved pairs);
the rest pass through. The key is what goes into the indexer's paged cache.

DeepSeek's own kernels apply a Hadamard rotation to q and k and quantize to
FP8 before scoring; the rotation is orthogonal (dot products unchanged), so
like transformers we score the plain vectors, unless the checkpoint is FP8
(quantization_config): then, as DeepSeek serves it, the cache holds each key
rotated and in e4m3 with a float32 scale per 128 dims (132 bytes at Di 128
instead of 256 in bf16; kernels/torch_ref/index_keys.py), and queries are
rotated alike. Queries stay in the model's dtype (DeepSeek's kernel also
rounds them to FP8).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from jevons.kernels.torch_ref.index_keys import FP8Keys, hadamard_rotate
from jevons.models.layers.rotary import RotaryEmbedding

# transformers and DeepSeek build k_norm as LayerNorm(Di, eps=1e-6) whatever
# the config's rms_norm_eps.
INDEX_NORM_EPS = 1e-6


@dataclass(frozen=True)
class IndexerConfig:
    hidden: int
    q_lora_rank: int
    num_heads: int  # index_n_heads
    head_dim: int  # index_head_dim
    rope_dim: int  # qk_rope_head_dim: the rotated prefix of each head
    topk: int  # index_topk
    key_fp8: bool = False  # cache keys as e4m3 + per-block scales (an FP8 checkpoint)
    key_scale_pow2: bool = False  # the ue8m0 scale format: power-of-two scales

    @classmethod
    def from_hf(cls, hf: dict) -> "IndexerConfig":
        if not hf.get("q_lora_rank"):
            raise ValueError("DeepSeek-V3.2's indexer reads the query bottleneck: q_lora_rank is required")
        quant = hf.get("quantization_config") or {}
        return cls(
            hidden=int(hf["hidden_size"]),
            q_lora_rank=int(hf["q_lora_rank"]),
            num_heads=int(hf.get("index_n_heads", 64)),
            head_dim=int(hf.get("index_head_dim", 128)),
            rope_dim=int(hf["qk_rope_head_dim"]),
            topk=int(hf.get("index_topk", 2048)),
            key_fp8=quant.get("quant_method") == "fp8",
            key_scale_pow2=quant.get("scale_fmt") == "ue8m0",
        )

    @property
    def fp8(self) -> FP8Keys | None:
        """The cached keys' FP8 format, or None for keys in the cache's dtype."""
        return FP8Keys(self.head_dim, pow2_scales=self.key_scale_pow2) if self.key_fp8 else None

    def cache_entry(self, dtype: torch.dtype) -> int:
        """Elements per token of the indexer-key cache in a `dtype` tensor."""
        fp8 = self.fp8
        return fp8.entry_elems(dtype) if fp8 is not None else self.head_dim

    @property
    def scale(self) -> float:
        """Applied to every q . k before the ReLU."""
        return self.head_dim**-0.5


class LightningIndexer(nn.Module):
    def __init__(self, c: IndexerConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.c = c
        self.wq_b = nn.Linear(c.q_lora_rank, c.num_heads * c.head_dim, bias=False)
        self.wk = nn.Linear(c.hidden, c.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(c.head_dim, eps=INDEX_NORM_EPS)
        self.weights_proj = nn.Linear(c.hidden, c.num_heads, bias=False)
        self.rotary = rotary

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, q_resid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, hidden], q_resid [N, q_lora_rank] -> (queries [N, Hi, Di],
        keys [N, Di], head weights [N, Hi] float32), rotated and scaled."""
        c = self.c
        n = x.shape[0]
        q = self.wq_b(q_resid).view(n, c.num_heads, c.head_dim)
        k = self.k_norm(self.wk(x)).unsqueeze(1)  # [N, 1, Di]
        q_rot, k_rot = self.rotary(positions, q[..., : c.rope_dim], k[..., : c.rope_dim])
        q = torch.cat([q_rot, q[..., c.rope_dim :]], dim=-1)
        k = torch.cat([k_rot, k[..., c.rope_dim :]], dim=-1).squeeze(1)
        if c.key_fp8:  # spread outlying dims over the quantization block (dot products unchanged)
            q, k = hadamard_rotate(q), hadamard_rotate(k)
        w = self.weights_proj(x).float() * c.num_heads**-0.5
        return q, k, w
