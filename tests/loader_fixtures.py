"""Shared helpers for the loader tests: the embedded SmolLM2 GGUF, tiny random
Hugging Face models, and small GGUF files written the way llama.cpp writes them."""
from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from jevons.loader.gguf_reader import GGUFFile  # noqa: E402
from jevons.loader.resolve import ModelNotFoundError, resolve_model  # noqa: E402

Q = gguf.GGMLQuantizationType


def smollm2_gguf() -> pathlib.Path:
    """Path of the embedded SmolLM2 GGUF; skips the test if the wheel is absent."""
    try:
        return resolve_model("smollm2-135m-instruct").path
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))


def tiny_hf_config(arch: str, tie: bool = False) -> Any:
    """A tiny Llama or Qwen2 config whose row lengths are multiples of 256, so
    every GGUF block type (including K-quants) can hold its matrices."""
    common = dict(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
    )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(rope_theta=50000.0, **common)
    from transformers import Qwen2Config

    return Qwen2Config(rope_theta=1000000.0, **common)


def tiny_hf_model(arch: str, tie: bool = False, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(arch, tie), dtype=torch.float32)
    with torch.no_grad():
        # Norm weights start at exactly 1; randomize them so a swapped norm is caught.
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.normal_(1.0 if "norm" in name else 0.0, 0.1)
    return model.eval()


# ---- writing GGUF files the way llama.cpp's converter does -------------------

_HF_TO_GGUF_BLOCK = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str) -> str:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in fixed:
        return fixed[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_HF_TO_GGUF_BLOCK[module]}.{kind}"


def llama_cpp_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute, written from its
    definition: rotate-half row order -> interleaved pairs, per head."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def encode_tensor(w: np.ndarray, kind: Any) -> np.ndarray:
    """Bytes (or values) for gguf.GGUFWriter.add_tensor(raw_dtype=kind)."""
    if kind == Q.F32:
        return w.astype(np.float32)
    if kind == Q.F16:
        return w.astype(np.float16)
    return gguf.quants.quantize(w.astype(np.float32), kind)


def write_model_gguf(
    path: pathlib.Path,
    arch: str,
    model: torch.nn.Module,
    kinds: dict[str, Any] | None = None,
    tokenizer_from: GGUFFile | None = None,
) -> dict[str, torch.Tensor]:
    """Write `model` as llama.cpp would (names, q/k permutation for llama, 1-D
    tensors in F32) and return the state dict it holds, for comparison.
    `kinds` maps an HF name substring to the block type of matching 2-D tensors."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(0)
    if tokenizer_from is not None:
        copy_tokenizer_metadata(w, tokenizer_from)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for name, tensor in state.items():
        data = tensor
        if arch == "llama" and ".self_attn.q_proj." in name:
            data = llama_cpp_permute(tensor, cfg.num_attention_heads)
        elif arch == "llama" and ".self_attn.k_proj." in name:
            data = llama_cpp_permute(tensor, cfg.num_key_value_heads)
        kind = Q.F32
        if data.dim() == 2:
            kind = next((k for pat, k in (kinds or {}).items() if pat in name), Q.F32)
        w.add_tensor(gguf_name(name), encode_tensor(data.numpy(), kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return state


def copy_tokenizer_metadata(
    w: Any,
    src: GGUFFile,
    pre: str | None = None,
    vocab_limit: int | None = None,
    extra_merges: Sequence[tuple[str, str]] = (),
) -> None:
    """Copy the `tokenizer.*` keys of another GGUF, optionally changing the
    pre-tokenizer name (to test regex choice on a real vocabulary), keeping
    only the first `vocab_limit` tokens with the merges among them (a smaller
    but self-consistent BPE vocabulary that loads many times faster), and
    appending `extra_merges` (with their merged tokens) at the end."""
    meta = src.metadata
    tokens = list(meta["tokenizer.ggml.tokens"][:vocab_limit])
    types = list(meta["tokenizer.ggml.token_type"][: len(tokens)])
    merges = meta.get("tokenizer.ggml.merges")
    if merges is not None and vocab_limit is not None:
        kept = set(tokens)
        merges = [m for m in merges if set(m.split(" ", 1)) <= kept and m.replace(" ", "", 1) in kept]
    for left, right in extra_merges:
        tokens.append(left + right)
        types.append(1)
        merges = [*(merges or []), f"{left} {right}"]
    w.add_tokenizer_model(meta["tokenizer.ggml.model"])
    w.add_tokenizer_pre(pre or meta.get("tokenizer.ggml.pre", "default"))
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges is not None:
        w.add_token_merges(merges)
    for key, add in (
        ("bos_token_id", w.add_bos_token_id),
        ("eos_token_id", w.add_eos_token_id),
        ("unknown_token_id", w.add_unk_token_id),
        ("padding_token_id", w.add_pad_token_id),
    ):
        if f"tokenizer.ggml.{key}" in meta:
            add(meta[f"tokenizer.ggml.{key}"])
    w.add_add_bos_token(bool(meta.get("tokenizer.ggml.add_bos_token", False)))
    if "tokenizer.chat_template" in meta:
        w.add_chat_template(meta["tokenizer.chat_template"])


def write_tokenizer_only_gguf(
    path: pathlib.Path,
    src: GGUFFile,
    pre: str,
    vocab_limit: int | None = None,
    extra_merges: Sequence[tuple[str, str]] = (),
) -> None:
    """A GGUF with a model header and tokenizer metadata but no tensors."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(2)
    w.add_layer_norm_rms_eps(1e-5)
    copy_tokenizer_metadata(w, src, pre=pre, vocab_limit=vocab_limit, extra_merges=extra_merges)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
