"""DeepSeek-V2 and V3 (V2, V2-Lite, V2.5, V3, R1, Moonlight) in one file.

Attention is MLA (layers/mla.py): the paged cache holds one latent + rope key
per token per layer. MLPs are dense for the first `first_k_dense_replace`
layers and DeepSeekMoE after (layers/moe.py); V2 and V3 differ only in the
router rule and in V3's optional multi-token-prediction layer (layers/mtp.py).
Checkpoints may ship FP8 block-scaled weights; they are dequantized at load.

With tensor parallelism (layers/tensor_parallel.py) each rank builds the same
classes at its shard's shapes: its MLA heads (layers/mla.py), its slice of
each dense MLP and shared expert, its routed experts or its slice of each
(layers/moe.py), its vocabulary rows; load_weights cuts every checkpoint
tensor to this rank's part as it streams in (layers/deepseek_weights.py).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from jevons.config import ModelConfig
from jevons.models.forward_context import ForwardContext
from jevons.models.layers.deepseek_weights import expected_tags, load_one, target_name, tp_slice
from jevons.models.layers.fp8 import block_size_from_config, pair_fp8_weights
from jevons.models.layers.mla import MLAConfig, MLAttention
from jevons.models.layers.moe import DeepseekMoE
from jevons.kernels.torch_ref.moe_routing import RouterConfig
from jevons.models.layers.mtp import MTPLayer
from jevons.models.layers.norm import RMSNorm
from jevons.models.layers.rotary import RotaryEmbedding
from jevons.models.layers.tensor_parallel import TensorParallel, VocabParallelEmbedding
from jevons.models.llama import LlamaMLP

CacheSpec = list[tuple[tuple[int, ...], tuple[int, ...]]]


def is_moe_layer(hf: dict, idx: int) -> bool:
    return bool(hf.get("n_routed_experts")) and idx >= int(hf.get("first_k_dense_replace", 0)) and (
        idx % int(hf.get("moe_layer_freq", 1)) == 0
    )


class DeepseekDecoderLayer(nn.Module):
    def __init__(
        self, cfg: ModelConfig, mla: MLAConfig, router: RouterConfig | None, idx: int, rotary: RotaryEmbedding,
        tp: TensorParallel = TensorParallel(),
    ) -> None:
        super().__init__()
        hf = cfg.hf
        if hf.get("hidden_act", "silu") != "silu":
            raise NotImplementedError(f"DeepSeek with hidden_act={hf['hidden_act']!r}")
        bias = bool(hf.get("mlp_bias", False))
        self.self_attn = MLAttention(mla, idx, rotary, tp.dense())
        self.mlp: nn.Module
        if router is not None and is_moe_layer(hf, idx):
            n_shared = int(hf.get("n_shared_experts") or 0)
            self.mlp = DeepseekMoE(cfg.hidden_size, int(hf["moe_intermediate_size"]), router, n_shared, bias, tp)
        else:
            self.mlp = LlamaMLP(cfg.hidden_size, cfg.intermediate_size, bias, tp.dense())
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        h = self.self_attn(positions, self.input_layernorm(x), ctx)
        # The residual add fused into the norm (one C pass on the cpu backend;
        # the same float add, then the same norm).
        normed, x = self.post_attention_layernorm.forward_add(h, x)
        return x + self.mlp(normed)


class DeepseekForCausalLM(nn.Module):
    """Serves both DeepseekV2ForCausalLM and DeepseekV3ForCausalLM."""

    # compute_logits prefers `fast_head` (layers/linear.py quantize_model: an
    # int8 copy of the head under -q int4/int8). V2-Lite's float32 head is
    # 102400 x 2048, 840 MB read per decode step: more than all its active
    # experts at 4 bits.
    supports_fast_head = True

    def __init__(self, cfg: ModelConfig, tp: TensorParallel = TensorParallel()) -> None:
        super().__init__()
        self.cfg = cfg
        self.tp = tp
        hf = cfg.hf
        self.v3 = cfg.architecture == "DeepseekV3ForCausalLM"
        self.mla = MLAConfig.from_model_config(cfg, self.v3)
        router = RouterConfig.from_hf(hf, self.v3) if hf.get("n_routed_experts") else None
        self.rotary = RotaryEmbedding(
            self.mla.qk_rope_head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling
        )
        n = cfg.num_hidden_layers
        if tp.dense().size == 1:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        else:
            self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp)
        self.layers = nn.ModuleList(DeepseekDecoderLayer(cfg, self.mla, router, i, self.rotary, tp) for i in range(n))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # Column-parallel over the vocabulary: the embedding shard's rows.
        rows = self.embed_tokens.num_embeddings
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, rows, bias=False)
        num_mtp = int(hf.get("num_nextn_predict_layers") or 0) if self.v3 else 0
        # Built when the config announces MTP; dropped in post_load if the
        # checkpoint turns out not to carry it (transformers' save does not).
        self.mtp_layers: nn.ModuleList | None = None
        if num_mtp:
            blocks = [DeepseekDecoderLayer(cfg, self.mla, router, n + d, self.rotary, tp) for d in range(num_mtp)]
            self.mtp_layers = nn.ModuleList(MTPLayer(b, cfg.hidden_size, cfg.rms_norm_eps) for b in blocks)
        self._loaded: set[str] | None = None

    # --- forward -------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(positions, x, ctx)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits; under tensor parallelism every rank gets them all."""
        head = getattr(self, "fast_head", None)
        if head is not None:
            shard = head(hidden).float()
        elif self.lm_head is None:  # tied
            shard = F.linear(hidden, self.embed_tokens.weight).float()
        else:
            # Called as a module, so whatever replaced the head (a quantized layer,
            # --deterministic's row-tiled wrapper, which has no .weight) applies.
            shard = self.lm_head(hidden).float()
        return self.tp.dense().gather_vocab(shard, self.cfg.vocab_size)

    def dp_idle(self, dtype: torch.dtype, device: torch.device) -> None:
        """DP-attention, a step with no requests on this rank: meet the other
        ranks in every MoE layer (they need this rank's routed experts for
        their tokens), with no tokens of its own."""
        x = torch.zeros(0, self.cfg.hidden_size, dtype=dtype, device=device)
        for layer in self.layers:
            if isinstance(layer.mlp, DeepseekMoE):
                layer.mlp(x)

    def forward_mtp(
        self, next_ids: torch.Tensor, positions: torch.Tensor, hidden: torch.Tensor, ctx: ForwardContext, depth: int = 0
    ) -> torch.Tensor:
        """Hidden state for the token after next. next_ids[i] is the token at
        positions[i] + 1, hidden[i] the main model's output at positions[i];
        compute_logits() of the result scores the token at positions[i] + 2.
        ctx.kv_caches must also cover mtp_kv_cache_spec()'s layers."""
        if self.mtp_layers is None:
            raise RuntimeError("this checkpoint has no multi-token-prediction layer")
        return self.mtp_layers[depth](self.embed_tokens(next_ids), hidden, positions, ctx)

    # --- KV cache shape --------------------------------------------------------
    def kv_cache_spec(self) -> CacheSpec:
        """Per layer, the per-token K and V entry: the latent + rope key, and
        nothing. The same on every tensor-parallel rank: all heads read the
        whole latent, so each rank caches all of it."""
        return [((self.mla.cache_entry,), (0,))] * self.cfg.num_hidden_layers

    def mtp_kv_cache_spec(self) -> CacheSpec:
        """Extra cache layers (indices num_hidden_layers, ...) the MTP block needs."""
        return [((self.mla.cache_entry,), (0,))] * (len(self.mtp_layers) if self.mtp_layers is not None else 0)

    # --- weights --------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        n = self.cfg.num_hidden_layers
        n_mtp = len(self.mtp_layers) if self.mtp_layers is not None else 0
        for hf_name, t, scale in pair_fp8_weights(weights, block_size_from_config(self.cfg.hf)):
            name = target_name(hf_name, n)
            if name is None or (name == "lm_head.weight" and self.lm_head is None):
                continue
            if name.startswith("mtp_layers.") and int(name.split(".")[1]) >= n_mtp:
                continue  # more MTP depths in the checkpoint than the config uses
            if ".shared_experts." in name and t.numel() == 0:
                continue  # n_shared_experts = 0 still saves empty tensors
            if self.tp.size > 1:
                cut = tp_slice(self, name, t)
                if cut is None:  # another rank's expert, or a row-parallel bias rank 0 adds
                    continue
                # FP8 block scales tile the whole tensor, not a shard; they are
                # only kept for a future FP8 backend, so a shard drops them.
                name, t, scale = cut[0], cut[1], None
            loaded |= load_one(self, params, name, t, scale)
        self._loaded = loaded
        return loaded

    def expected_weights(self) -> set[str]:
        """Everything but the MTP layer, which a checkpoint may or may not carry."""
        return {t for t in expected_tags(self) if not t.startswith("mtp_layers.")}

    def post_load(self) -> None:
        if self.mtp_layers is None or self._loaded is None:
            return  # nothing to check, or dummy weights (keep MTP for sizing work)
        want = expected_tags(self, "mtp_layers.")
        got = want & self._loaded
        if not got:
            self.mtp_layers = None  # the checkpoint has no MTP weights: free them
        elif got != want:
            raise ValueError(f"checkpoint has a partial MTP layer; missing e.g. {sorted(want - got)[:5]}")
