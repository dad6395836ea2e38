"""Multi-head Latent Attention (DeepSeek-V2/V3).

Each token is compressed to a kv_lora_rank latent (kv_a_proj_with_mqa ->
kv_a_layernorm) plus one rope key shared by all heads; only those
R + Dr values per token go into the paged cache. The query comes either
straight from the hidden state (q_proj, V2-Lite) or through its own low-rank
bottleneck (q_a_proj -> q_a_layernorm -> q_b_proj).

Rope layout: the checkpoints' rope dimensions rotate as interleaved pairs
(x0, x1), (x2, x3), ... Instead of permuting weights we de-interleave q_rope
and k_rope to [evens | odds] and apply the usual rotate-half rotation: the
result is the same rotation in a permuted order, and since q and k share the
permutation every dot product is exact. transformers' V3 code produces this
very layout; its V2 code (complex multiply) produces the interleaved one,
which has the same dot products.

Tensor parallelism (layers/tensor_parallel.py) splits the heads: q_proj or
q_b_proj and kv_b_proj are column-parallel (this rank's heads' rows), o_proj
row-parallel, and one all-reduce sums the ranks' o_proj outputs. The query's
q_a_proj and the latent's kv_a_proj_with_mqa and kv_a_layernorm stay whole
on every rank: every head reads the same latent, so each rank's paged cache
holds the full latent of every token (MLA's cache does not shrink with more
ranks; a GQA model's does).

Quantized (`-q int8`/`int4`) on the CPU, kv_b_proj becomes 8-bit rows
(layers/mla_kv_b.py, `quantize_owned`): the C decode kernel reads them as
they are, and everything else (prefill spans, the torch paths) their
dequantization, so every path computes one function of one weight.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from jevons.config import ModelConfig
from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.kernels.cpu.mla_prep import mla_prep
from jevons.kernels.registry import KernelOps, ops_for
from jevons.models.forward_context import ForwardContext
from jevons.models.layers.mla_kv_b import Int8KvB, quantizes_kv_b
from jevons.models.layers.norm import RMSNorm
from jevons.models.layers.rotary import RotaryEmbedding, yarn_mscale
from jevons.models.layers.tensor_parallel import TensorParallel

# transformers and DeepSeek build the two low-rank norms without passing
# rms_norm_eps, so they always use this default.
LORA_NORM_EPS = 1e-6


@dataclass(frozen=True)
class MLAConfig:
    hidden: int
    num_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    bias: bool
    rope_interleave: bool
    scale: float

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, v3: bool) -> "MLAConfig":
        hf = cfg.hf
        nope, rope = int(hf["qk_nope_head_dim"]), int(hf["qk_rope_head_dim"])
        return cls(
            hidden=cfg.hidden_size,
            num_heads=cfg.num_attention_heads,
            q_lora_rank=int(hf["q_lora_rank"]) if hf.get("q_lora_rank") else None,
            kv_lora_rank=int(hf["kv_lora_rank"]),
            qk_nope_head_dim=nope,
            qk_rope_head_dim=rope,
            v_head_dim=int(hf["v_head_dim"]),
            bias=bool(hf.get("attention_bias", False)),
            # V2 always interleaves; V3 configs may opt out.
            rope_interleave=bool(hf.get("rope_interleave", True)) if v3 else True,
            scale=softmax_scale(nope + rope, cfg.rope_scaling),
        )

    @property
    def cache_entry(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim


def softmax_scale(qk_head_dim: int, rope_scaling: dict | None) -> float:
    """1/sqrt(d), times YaRN's mscale(factor, mscale_all_dim) squared: DeepSeek
    scales the whole attention temperature, not just the rope part."""
    scale = qk_head_dim**-0.5
    s = rope_scaling or {}
    if s.get("rope_type", s.get("type", "default")) != "default" and s.get("mscale_all_dim"):
        m = yarn_mscale(float(s["factor"]), float(s["mscale_all_dim"]))
        scale *= m * m
    return scale


def deinterleave(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...): pairs become halves."""
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)


class MLAttention(nn.Module):
    def __init__(
        self, c: MLAConfig, layer_idx: int, rotary: RotaryEmbedding, tp: TensorParallel = TensorParallel()
    ) -> None:
        super().__init__()
        self.c = c
        self.layer_idx = layer_idx
        self.tp = tp
        # This rank's heads (all of them on one device).
        self.nh = h = tp.split(c.num_heads, "the number of attention heads")
        qk = c.qk_nope_head_dim + c.qk_rope_head_dim
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(c.hidden, h * qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(c.hidden, c.q_lora_rank, bias=c.bias)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, LORA_NORM_EPS)
            self.q_b_proj = nn.Linear(c.q_lora_rank, h * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden, c.cache_entry, bias=c.bias)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, LORA_NORM_EPS)
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, h * (c.qk_nope_head_dim + c.v_head_dim), bias=False)
        # A row-parallel bias is added once, on rank 0, not once per rank.
        self.o_proj = nn.Linear(h * c.v_head_dim, c.hidden, bias=c.bias and tp.rank == 0)
        self.rotary = rotary
        # Which algebraic form each kind of row uses; tests flip these.
        self.decode_form = "absorbed"
        self.prefill_form = "expanded"

    def forward(self, positions: torch.Tensor, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        c = self.c
        n = x.shape[0]
        if c.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(n, self.nh, -1)
        kv = self.kv_a_proj_with_mqa(x)
        kv_cache = ctx.kv_caches[self.layer_idx][0]
        ops = ops_for(x.device)  # torch reference on CPU, Triton on CUDA, C kernels on the cpu backend
        prepped = None
        if ops.backend == "cpu":  # the glue below in one C call (kernels/cpu/mla_prep.py)
            prepped = mla_prep(q, kv, c.qk_nope_head_dim, c.kv_lora_rank, self.rotary.cos, self.rotary.sin,
                               positions, self.kv_a_layernorm.weight, self.kv_a_layernorm.eps, c.rope_interleave,
                               kv_cache, ctx.attn.slot_mapping)
        q_rope, latent = prepped if prepped is not None else self._prep_torch(positions, q, kv, kv_cache, ctx, ops)
        q_nope = q[..., : c.qk_nope_head_dim]
        meta = ctx.attn
        if ops.backend == "cpu" and self.decode_form == "absorbed" and len(meta.decode_seqs):
            out = self._decode_in_c(ops, q_nope, q_rope, latent, kv_cache, meta)
        else:
            out = ops.mla_attention(
                q_nope, q_rope, latent, kv_cache, meta, self.kv_b_float(q.dtype), c.scale, self.decode_form,
                self.prefill_form,
            )
        return self.tp.all_reduce(self.o_proj(out.reshape(n, -1)))

    def quantize_owned(self, method: str) -> bool:
        """Called by quantize_model (layers/linear.py) for the weight this
        layer reads itself: kv_b_proj to 8-bit rows (layers/mla_kv_b.py) where
        `method` quantizes on the CPU, the float weight dropped. True if done."""
        kv_b = self.kv_b_proj
        if not isinstance(kv_b, nn.Linear) or not quantizes_kv_b(method, kv_b.weight):
            return False
        self.kv_b_proj = Int8KvB(kv_b.weight)
        return True

    def kv_b_rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(w_kv_b [H, Dn + Dv, R], row scales [H, Dn + Dv] or None) as the
        decode kernel takes them: int8 with scales, or the float weight."""
        if isinstance(self.kv_b_proj, Int8KvB):
            return self.kv_b_proj.rows(self.nh)
        return self.kv_b_proj.weight.view(self.nh, -1, self.c.kv_lora_rank), None

    def kv_b_float(self, dtype: torch.dtype) -> torch.Tensor:
        """kv_b_proj's weight as floats [H, Dn + Dv, R] for the torch forms:
        the float weight, or the 8-bit rows dequantized (once a call)."""
        if isinstance(self.kv_b_proj, Int8KvB):
            return self.kv_b_proj.dequantized(dtype).view(self.nh, -1, self.c.kv_lora_rank)
        return self.kv_b_proj.weight.view(self.nh, -1, self.c.kv_lora_rank)

    def _prep_torch(
        self, positions: torch.Tensor, q: torch.Tensor, kv: torch.Tensor, kv_cache: torch.Tensor,
        ctx: ForwardContext, ops: KernelOps,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q_rope rotated and the latent [N, R + Dr] (normalized latent, rotated
        rope key), written to the cache: the reference of kernels/cpu/mla_prep.py."""
        c = self.c
        q_rope = q[..., c.qk_nope_head_dim :]
        kv_c, k_rope = kv.split([c.kv_lora_rank, c.qk_rope_head_dim], dim=-1)
        k_rope = k_rope.unsqueeze(1)  # one head shared by all query heads
        if c.rope_interleave:
            q_rope, k_rope = deinterleave(q_rope), deinterleave(k_rope)
        q_rope, k_rope = self.rotary(positions, q_rope, k_rope)
        latent = torch.cat([self.kv_a_layernorm(kv_c), k_rope.squeeze(1)], dim=-1)  # [N, R + Dr]
        ops.write_latent(kv_cache, latent, ctx.attn.slot_mapping)
        return q_rope, latent

    def _decode_in_c(
        self, ops: KernelOps, q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor,
        kv_cache: torch.Tensor, meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Decode rows through the CPU backend's absorbed-decode kernel
        (kernels/cpu/sparse_mla.py, V3.2's op with no selection: each row over
        its whole context, read in place through its block table, float32
        sums); prefill spans keep ops.mla_attention's path. This rank's heads
        are just fewer heads to the kernel, so tensor parallelism needs no
        fallback; shapes or dtypes the kernel does not take (a cache dtype
        other than the query's) go to its torch reference inside the op.
        kv_b_proj goes in as stored (int8 rows when quantized: kv_b_rows)."""
        n = q_nope.shape[0]
        w_kv_b, w_scale = self.kv_b_rows()
        if not meta.prefills and len(meta.decode_seqs) == meta.block_tables.shape[0] == n:
            # Every row is a decode row and every sequence has one, so row b is
            # sequence b's (AttentionMetadata.build numbers them so): no
            # gathers, and the kernel's output is the result.
            return ops.sparse_mla_decode(q_nope, q_rope, kv_cache, meta.block_tables, None, meta.seq_lens,
                                         w_kv_b, self.c.scale, w_scale=w_scale)
        t = meta.decode_tokens
        decoded = ops.sparse_mla_decode(
            q_nope[t], q_rope[t], kv_cache, meta.block_tables[meta.decode_seqs], None,
            meta.seq_lens[meta.decode_seqs], w_kv_b, self.c.scale, w_scale=w_scale,
        )
        if not meta.prefills:
            out = decoded.new_empty(n, *decoded.shape[1:])
        else:  # the spans alone: no decode rows left for the torch path to compute
            none = meta.decode_seqs[:0]
            spans = replace(meta, decode_seqs=none, decode_tokens=none, decode_kv_slots=meta.decode_kv_slots[:0],
                            decode_mask=meta.decode_mask[:0])
            out = ops.mla_attention(q_nope, q_rope, latent, kv_cache, spans, self.kv_b_float(q_nope.dtype),
                                    self.c.scale, self.decode_form, self.prefill_form)
        out[t] = decoded
        return out
