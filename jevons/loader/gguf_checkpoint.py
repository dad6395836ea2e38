"""A GGUF file seen as a Hugging Face checkpoint: config.json keys and HF tensor names.

Two things llama.cpp's converter changed on the way in are undone here:
- names: `blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`;
- for the "llama" architecture, the rows of q_proj/k_proj were permuted per head
  from HF's rotate-half RoPE layout (pairs (i, i + d/2)) to ggml's interleaved one
  (pairs (2i, 2i + 1)); we permute them back so HF-style rotary applies.
"""
from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from jevons.loader.checkpoint import Checkpoint, convert_for_load
from jevons.loader.gguf_deepseek import CONSUMED_WITH_K_B, DEEPSEEK_BLOCK_NAMES, deepseek2_hf_config, fuse_kv_b
from jevons.loader.gguf_quant import QuantLevels, StoredBlocks, levels_from_blocks
from jevons.loader.gguf_reader import GGUFFile, dequantize_tensor, open_gguf

# GGUF architecture -> (HF architectures entry, HF model_type, q/k rows permuted?)
_ARCHS: dict[str, tuple[str, str, bool]] = {
    "llama": ("LlamaForCausalLM", "llama", True),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", False),
    # V2 or V3 by its router (gguf_deepseek.py decides)
    "deepseek2": ("DeepseekV2ForCausalLM", "deepseek_v2", False),
}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    **DEEPSEEK_BLOCK_NAMES,
}

# Tensors with no HF counterpart. `rope_freqs` holds Llama-3.1 RoPE scaling
# factors that HF derives from config.rope_scaling instead.
_SKIPPED = frozenset({"rope_freqs.weight"})

_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")

# general.file_type (llama.cpp's LLAMA_FTYPE) -> the dtype of its unquantized tensors
_FILE_DTYPES = {0: "float32", 1: "float16", 32: "bfloat16"}


def hf_tensor_name(gguf_name: str) -> str | None:
    """HF name for a llama.cpp tensor name; None for tensors HF has no place for."""
    if gguf_name in _SKIPPED:
        return None
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK_RE.match(gguf_name)
    if m and m.group(2) == CONSUMED_WITH_K_B:
        return None  # read with its attn_k_b into one kv_b_proj
    if m and m.group(2) in _BLOCK_NAMES:
        # exp_probs_b.bias -> mlp.gate.e_score_correction_bias (a buffer name, no dot)
        sep = "_" if m.group(2) == "exp_probs_b" else "."
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}{sep}{m.group(3)}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no known Hugging Face name")


def unpermute_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's `permute`: within each head, rows were reordered from
    [first half | second half] to interleaved pairs; restore the halves."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _as_int(value: Any) -> int:
    # Some files store per-layer head counts as arrays; uniform ones reduce to one int.
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise NotImplementedError(f"per-layer varying value {value} is not supported")
        return int(value[0])
    return int(value)


def _rope_scaling(f: GGUFFile) -> dict[str, Any] | None:
    kind = f.arch_key("rope.scaling.type")
    factor = f.arch_key("rope.scaling.factor")
    if kind is None and f.arch_key("rope.scale_linear") is not None:
        kind, factor = "linear", f.arch_key("rope.scale_linear")
    if kind in (None, "none") or factor is None:
        return None
    scaling: dict[str, Any] = {"rope_type": str(kind), "type": str(kind), "factor": float(factor)}
    original = f.arch_key("rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def gguf_to_hf_config(f: GGUFFile) -> dict[str, Any]:
    """Map GGUF metadata onto the keys of a Hugging Face config.json."""
    arch = f.architecture
    if arch not in _ARCHS:
        raise NotImplementedError(f"GGUF architecture {arch!r} is not supported (supported: {sorted(_ARCHS)})")
    hf_arch, model_type, _ = _ARCHS[arch]
    heads = _as_int(f.arch_key("attention.head_count"))
    tokens = f.metadata.get("tokenizer.ggml.tokens")
    vocab = f.arch_key("vocab_size") or (len(tokens) if tokens else f.tensor_shape("token_embd.weight")[0])
    config: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "vocab_size": int(vocab),
        "hidden_size": int(f.arch_key("embedding_length")),
        "intermediate_size": _as_int(f.arch_key("feed_forward_length")),
        "num_hidden_layers": int(f.arch_key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": _as_int(f.arch_key("attention.head_count_kv", heads)),
        "max_position_embeddings": int(f.arch_key("context_length", 4096)),
        "rms_norm_eps": float(f.arch_key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(f.arch_key("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(f),
        "tie_word_embeddings": "output.weight" not in f.tensors,
        "attention_bias": "blk.0.attn_q.bias" in f.tensors,
        "hidden_act": "silu",
        "torch_dtype": _FILE_DTYPES.get(int(f.metadata.get("general.file_type", 0)), "float32"),
    }
    if arch == "deepseek2":
        return deepseek2_hf_config(f, config)
    head_dim = f.arch_key("attention.key_length")
    if head_dim is not None:
        config["head_dim"] = int(head_dim)
    for key in ("bos", "eos", "padding"):
        token_id = f.metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            config["pad_token_id" if key == "padding" else f"{key}_token_id"] = int(token_id)
    return config


class GGUFCheckpoint(Checkpoint):
    def __init__(self, path: pathlib.Path) -> None:
        self.file = open_gguf(path)
        self.config: dict[str, Any] = gguf_to_hf_config(self.file)
        self._permuted = _ARCHS[self.file.architecture][2]
        # (gguf name, hf name) in file order, skipping tensors HF has no place for.
        self._names = [(g, h) for g in self.file.tensors if (h := hf_tensor_name(g)) is not None]
        self._gguf_names = {h: g for g, h in self._names}

    def tensor_names(self) -> list[str]:
        return [hf for _, hf in self._names]

    def _heads_for(self, hf_name: str) -> int | None:
        """Head count to un-permute this tensor by, or None if it was not permuted."""
        if not self._permuted:
            return None
        if ".self_attn.q_proj." in hf_name:
            return int(self.config["num_attention_heads"])
        if ".self_attn.k_proj." in hf_name:
            return int(self.config["num_key_value_heads"])
        return None

    def stored_bits(self) -> int | None:
        """4 or 8 when most layer matmul weights (blk.*, 2-D) are a 4- or 8-bit
        ggml type; None when they are float."""
        kinds = [
            t.tensor_type.name for name, t in self.file.tensors.items()
            if name.startswith("blk.") and name.endswith(".weight") and len(t.shape) == 2
        ]
        if not kinds:
            return None
        common = max(set(kinds), key=kinds.count)
        if common.startswith("Q4") or common.startswith("IQ4"):
            return 4
        if common.startswith("Q8"):
            return 8
        return None

    def quantized_levels(self, hf_name: str) -> QuantLevels | None:
        """The stored blocks of `hf_name` as levels on qgemm's grid, rows in HF
        order, when its type maps exactly (loader/gguf_quant.py); else None."""
        gguf_name = self._gguf_names.get(hf_name)
        if gguf_name is None:
            return None
        t = self.file.tensors[gguf_name]
        levels = levels_from_blocks(t.data, t.tensor_type, self.file.tensor_shape(gguf_name))
        heads = self._heads_for(hf_name)
        if levels is not None and heads is not None:
            rows = levels.u.shape[0]
            levels = levels.rows(unpermute_rows(torch.arange(rows), heads))
        return levels

    def stored_blocks(self, hf_name: str) -> StoredBlocks | None:
        """`hf_name`'s bytes as stored (a quantized type's blocks, which
        `quantized_levels` reads, or plain F32/F16/BF16 values), rows in HF
        order; None for a tensor made of two (DeepSeek's split kv_b)."""
        gguf_name = self._gguf_names.get(hf_name)
        if gguf_name is None or gguf_name.endswith(".attn_k_b.weight"):
            return None
        t = self.file.tensors[gguf_name]
        data = t.data.view(np.uint8)  # F32/F16 are typed views
        shape = self.file.tensor_shape(gguf_name)
        heads = self._heads_for(hf_name)
        rows = unpermute_rows(torch.arange(shape[0]), heads) if heads is not None else None
        return StoredBlocks(data.reshape(-1, data.shape[-1]), int(t.tensor_type), shape, rows)

    def _read(self, gguf_name: str) -> torch.Tensor:
        if gguf_name.endswith(".attn_k_b.weight"):
            return fuse_kv_b(self.file.read(gguf_name), self.file.read(gguf_name.replace("attn_k_b", CONSUMED_WITH_K_B)))
        return self.file.read(gguf_name)

    def _tensor(self, gguf_name: str, hf_name: str, dtype: torch.dtype) -> torch.Tensor:
        tensor = self._read(gguf_name)
        heads = self._heads_for(hf_name)
        if heads is not None:
            tensor = unpermute_rows(tensor, heads)
        return convert_for_load(hf_name, tensor, dtype)

    def iter_weights(self, dtype: torch.dtype,
                     skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor but those named in `skip` (HF names), which are never
        read: runner/direct_load.py builds their layers from the file itself."""
        for gguf_name, hf_name in self._names:
            if hf_name not in skip:
                yield hf_name, self._tensor(gguf_name, hf_name, dtype)

    def read_weight(self, hf_name: str, dtype: torch.dtype, expert: int | None = None) -> torch.Tensor:
        """One tensor as iter_weights yields it; with `expert`, only that
        expert's [N, K] slice of a stacked [E, N, K] tensor (only its blocks
        are dequantized)."""
        gguf_name = self._gguf_names[hf_name]
        if expert is None:
            return self._tensor(gguf_name, hf_name, dtype)
        t = self.file.tensors[gguf_name]
        one = replace(t, shape=t.shape[:2], data=t.data[expert])  # ggml order: [K, N, E] -> [K, N]
        return convert_for_load(hf_name, dequantize_tensor(one), dtype)
