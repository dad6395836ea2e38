"""The Llama family in one file: Llama 2/3, SmolLM2, Mistral and Qwen2 (qkv bias).

Q, K and V share one matmul and gate/up share another: on a CPU every separate
GEMM call costs a pass over the activations, so fusing them is free speed.
Checkpoints keep separate tensors; load_weights stacks them.

With tensor parallelism (layers/tensor_parallel.py) each rank builds the same
classes at its shard's shapes: its attention heads (and KV heads, so its KV
cache holds only those), its slice of the intermediate size and of the
vocabulary; load_weights cuts each checkpoint tensor to this rank's slice as
it streams in, and o_proj and down_proj outputs are summed across ranks.

The small ops between the matmuls (norms, residual adds, rotary, SiLU-and-mul)
go through the kernel registry, so the CPU runs each as one C call and the GPU
as one Triton launch; the residual stream is carried beside the hidden state
so each add fuses into the norm that follows it.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from jevons.config import ModelConfig
from jevons.kernels.cpu import llama_decode as decode_plan
from jevons.models.forward_context import ForwardContext
from jevons.models.layers.attention import PagedAttention
from jevons.models.layers.norm import RMSNorm
from jevons.kernels.registry import ops_for
from jevons.models.layers.rotary import RotaryEmbedding
from jevons.models.layers.tensor_parallel import TensorParallel, VocabParallelEmbedding, load_rows

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin) for this step's positions


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, rotary: RotaryEmbedding, tp: TensorParallel) -> None:
        super().__init__()
        # This rank's heads (all of them on one device).
        self.nh = tp.split(cfg.num_attention_heads, "the number of attention heads")
        self.nkv, self.hd = tp.kv_heads(cfg.num_key_value_heads)[1], cfg.head_dim
        self.q_size, self.kv_size = self.nh * self.hd, self.nkv * self.hd
        self.tp = tp
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        # A row-parallel bias is added once, on rank 0, not once per rank.
        out_bias = bool(cfg.hf.get("attention_out_bias", False)) and tp.rank == 0
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=out_bias)
        self.rotary = rotary
        self.attn = PagedAttention(layer_idx, self.nh, self.nkv, self.hd, self.hd**-0.5)

    def forward(self, rope: Rope, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.nh, self.hd)
        k = k.view(-1, self.nkv, self.hd)
        v = v.view(-1, self.nkv, self.hd)
        q, k = ops_for(x.device).rotary(q, k, *rope)
        return self.tp.all_reduce(self.o_proj(self.attn(q, k, v, ctx)))


class LlamaMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, bias: bool = False, tp: TensorParallel = TensorParallel()) -> None:
        super().__init__()
        self.intermediate = tp.split(intermediate, "intermediate_size")  # this rank's slice
        self.tp = tp
        self.gate_up_proj = nn.Linear(hidden, 2 * self.intermediate, bias=bias)
        self.down_proj = nn.Linear(self.intermediate, hidden, bias=bias and tp.rank == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(self.down_proj(ops_for(x.device).silu_and_mul(self.gate_up_proj(x))))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, rotary: RotaryEmbedding, tp: TensorParallel) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_idx, rotary, tp)
        self.mlp = LlamaMLP(cfg.hidden_size, cfg.intermediate_size, bool(cfg.hf.get("mlp_bias", False)), tp)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, rope: Rope, x: torch.Tensor, residual: torch.Tensor | None, ctx: ForwardContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's MLP output, the residual stream before it): the
        next layer's norm adds them, so every residual add fuses into a norm."""
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.forward_add(x, residual)
        h, residual = self.post_attention_layernorm.forward_add(self.self_attn(rope, h, ctx), residual)
        return self.mlp(h), residual


class LlamaForCausalLM(nn.Module):
    supports_fast_head = True  # compute_logits uses `fast_head` when one is set
    # An untied model only calls embed_tokens (never reads its weight), so the
    # direct loader may leave it in the file (runner/direct_load.StoredEmbedding).
    embedding_lookup_only = True
    prepack_linears = True  # no code reads a Linear's .weight after loading (layers/packed_linear.py)
    # checkpoint name fragment -> (our fused parameter, shard id)
    stacked = {
        ".q_proj.": (".qkv_proj.", "q"),
        ".k_proj.": (".qkv_proj.", "k"),
        ".v_proj.": (".qkv_proj.", "v"),
        ".gate_proj.": (".gate_up_proj.", 0),
        ".up_proj.": (".gate_up_proj.", 1),
    }

    def __init__(self, cfg: ModelConfig, tp: TensorParallel = TensorParallel()) -> None:
        super().__init__()
        self.cfg = cfg
        self.tp = tp
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        if tp.size == 1:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        else:
            self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, i, self.rotary, tp) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:  # column-parallel over the vocabulary: the same rows as the embedding shard
            self.lm_head = nn.Linear(cfg.hidden_size, self.embed_tokens.num_embeddings, bias=False)

    # --- forward -------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        if x.device.type == "cpu" and decode_plan.enabled() and self.tp.size == 1:  # the C step has no all-reduce
            hidden = decode_plan.fused_decode(self, x, positions, ctx)
            if hidden is not None:
                return hidden
        rope = self.rotary.lookup(positions, x.dtype)
        residual = None
        for layer in self.layers:
            x, residual = layer(rope, x, residual, ctx)
        return self.norm.forward_add(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits; with tensor parallelism each rank computes its vocab
        shard and every rank gets them all (runner: all ranks sample alike)."""
        return self.tp.gather_vocab(self._shard_logits(hidden), self.cfg.vocab_size)

    def _shard_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = getattr(self, "fast_head", None)  # quantized or prepacked copy, see layers/linear.py
        if head is not None:
            return head(hidden).float()
        if self.lm_head is not None:
            return self.lm_head(hidden).float()
        return F.linear(hidden, self.embed_tokens.weight).float()

    # --- KV cache shape --------------------------------------------------------
    def kv_cache_spec(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Per layer, the per-token shape of its K and V cache entries."""
        kv = (self.tp.kv_heads(self.cfg.num_key_value_heads)[1], self.cfg.head_dim)  # this rank's heads
        return [(kv, kv)] * self.cfg.num_hidden_layers

    # --- weights --------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if "rotary_emb" in name:
                continue
            if name == "lm_head.weight" and self.lm_head is None:
                continue
            if self.tp.size > 1:
                tensor = self._tp_slice(name, tensor)
                if tensor is None:  # a row-parallel bias, which rank 0 alone adds
                    continue
            for frag, (fused, shard) in self.stacked.items():
                if frag in name:
                    target = name.replace(frag, fused)
                    self._load_shard(params[target], tensor, shard)
                    loaded.add(target + f"#{shard}")
                    break
            else:
                if name not in params:
                    raise KeyError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
                if self.tp.size > 1 and name in ("embed_tokens.weight", "lm_head.weight"):
                    load_rows(params[name], tensor, self.embed_tokens.start)  # the vocab shard, padded
                else:
                    params[name].data.copy_(tensor)
                loaded.add(name)
        return loaded

    def _tp_slice(self, name: str, tensor: torch.Tensor) -> torch.Tensor | None:
        """This rank's part of a full checkpoint tensor (the vocab-sharded
        embedding and head are cut at copy time, they may need padding)."""
        cfg, tp, hd = self.cfg, self.tp, self.cfg.head_dim
        if ".q_proj." in name:
            n = cfg.num_attention_heads // tp.size * hd
            return tensor[tp.rank * n : (tp.rank + 1) * n]
        if ".k_proj." in name or ".v_proj." in name:
            first, count = tp.kv_heads(cfg.num_key_value_heads)
            return tensor[first * hd : (first + count) * hd]
        if ".gate_proj." in name or ".up_proj." in name:
            n = cfg.intermediate_size // tp.size
            return tensor[tp.rank * n : (tp.rank + 1) * n]
        if ".o_proj." in name or ".down_proj." in name:
            if name.endswith(".bias"):
                return tensor if tp.rank == 0 else None
            n = tensor.shape[1] // tp.size
            return tensor[:, tp.rank * n : (tp.rank + 1) * n]
        return tensor  # norms are replicated

    def _load_shard(self, param: torch.Tensor, tensor: torch.Tensor, shard: str | int) -> None:
        cfg = self.cfg
        if isinstance(shard, int):
            size = param.shape[0] // 2
            param.data[shard * size : (shard + 1) * size].copy_(tensor)
            return
        attn = self.layers[0].self_attn  # this rank's head counts
        q, kv = attn.nh * cfg.head_dim, attn.nkv * cfg.head_dim
        start, size = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}[shard]
        param.data[start : start + size].copy_(tensor)

    def expected_weights(self) -> set[str]:
        """Names load_weights must have filled for the model to be complete."""
        out: set[str] = set()
        for name, _ in self.named_parameters():
            if name.endswith("qkv_proj.weight") or name.endswith("qkv_proj.bias"):
                out |= {f"{name}#q", f"{name}#k", f"{name}#v"}
            elif ".gate_up_proj." in name:
                out |= {f"{name}#0", f"{name}#1"}
            else:
                out.add(name)
        return out
