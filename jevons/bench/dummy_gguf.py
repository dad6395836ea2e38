"""A config-only preset written as a GGUF with random weights, so start-up and
speed can be measured on a realistic shape without downloading a model, and
llama.cpp's own `llama-quantize` can turn it into the same Q4_K_M/Q8_0 file
both engines read.

    python -m jevons.bench.dummy_gguf deepseek-r1-distill-qwen-1.5b /tmp/qwen15.gguf \
        --quantize Q4_K_M --llama-bin ~/.cache/jevons/peers/<llama.cpp>/bin

Llama-family presets (llama, qwen2) only. Weights are N(0, 0.02) in F16, norms
one; q/k rows are stored in llama.cpp's order (random either way). The
vocabulary is SmolLM2's (the embedded GGUF) padded with unused tokens to the
preset's size, so a tokenizer loads and llama.cpp accepts the file; its merges
are SmolLM2's, fewer than a real Qwen2 vocabulary's 151k."""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
from typing import Any

import numpy as np

_ARCH = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
_UNUSED = 5  # gguf.TokenType.UNUSED


def _tokenizer(w: Any, vocab_size: int, cfg: dict[str, Any]) -> None:
    from jevons.loader.gguf_reader import open_gguf
    from jevons.loader.resolve import resolve_model

    meta = open_gguf(resolve_model("smollm2-135m-instruct").path).metadata
    tokens = list(meta["tokenizer.ggml.tokens"])[:vocab_size]
    types = list(meta["tokenizer.ggml.token_type"])[: len(tokens)]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    types += [_UNUSED] * (vocab_size - len(types))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(str(meta.get("tokenizer.ggml.pre", "default")))
    w.add_token_list(tokens)
    w.add_token_types(types)
    merges = list(meta["tokenizer.ggml.merges"])
    if vocab_size < len(meta["tokenizer.ggml.tokens"]):
        # A cut vocabulary keeps only the merges among its own tokens.
        kept = set(tokens)
        merges = [m for m in merges if set(m.split(" ", 1)) <= kept and m.replace(" ", "", 1) in kept]
    w.add_token_merges(merges)
    w.add_bos_token_id(int(meta["tokenizer.ggml.bos_token_id"]))
    w.add_eos_token_id(int(meta["tokenizer.ggml.eos_token_id"]))
    if "tokenizer.chat_template" in meta:
        w.add_chat_template(meta["tokenizer.chat_template"])


def _shapes(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...], bool]]:
    """(llama.cpp name, torch-order shape, is a norm) for every tensor."""
    h, inter, layers = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads) * int(cfg.get("head_dim") or h // heads)
    q = heads * int(cfg.get("head_dim") or h // heads)
    bias = cfg["architectures"][0] == "Qwen2ForCausalLM" or bool(cfg.get("attention_bias"))
    out = [("token_embd.weight", (int(cfg["vocab_size"]), h), False)]
    for i in range(layers):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (h,), True), (b + "attn_q.weight", (q, h), False),
                (b + "attn_k.weight", (kv, h), False), (b + "attn_v.weight", (kv, h), False)]
        if bias:
            out += [(b + "attn_q.bias", (q,), False), (b + "attn_k.bias", (kv,), False), (b + "attn_v.bias", (kv,), False)]
        out += [(b + "attn_output.weight", (h, q), False), (b + "ffn_norm.weight", (h,), True),
                (b + "ffn_gate.weight", (inter, h), False), (b + "ffn_up.weight", (inter, h), False),
                (b + "ffn_down.weight", (h, inter), False)]
    out.append(("output_norm.weight", (h,), True))
    if not cfg.get("tie_word_embeddings", False):
        out.append(("output.weight", (int(cfg["vocab_size"]), h), False))
    return out


def write_dummy_gguf(preset: str, path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    import gguf

    from jevons.loader.presets import get_preset

    cfg = get_preset(preset)
    arch = _ARCH.get(cfg["architectures"][0])
    if arch is None:
        raise SystemExit(f"{preset}: {cfg['architectures'][0]} is not a Llama-family preset")
    heads = int(cfg["num_attention_heads"])
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"{preset} (random weights)")
    w.add_block_count(int(cfg["num_hidden_layers"]))
    w.add_context_length(int(cfg.get("max_position_embeddings", 4096)))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(heads)
    w.add_head_count_kv(int(cfg.get("num_key_value_heads") or heads))
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_rope_dimension_count(int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads))
    w.add_vocab_size(int(cfg["vocab_size"]))
    w.add_file_type(1)  # mostly F16
    _tokenizer(w, int(cfg["vocab_size"]), cfg)
    rng = np.random.default_rng(seed)
    # Drawing billions of normals takes minutes on a small machine; matrices
    # are cut from one pool of 16M draws at random offsets instead (values
    # repeat across tensors, which no timing or format check can tell).
    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).astype(np.float16)
    shapes = _shapes(cfg)
    for name, shape, is_norm in shapes:
        if is_norm:
            data = np.ones(shape, dtype=np.float32)
        elif len(shape) == 1:
            data = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float16), int(np.prod(shape)) * 2)
            continue
        w.add_tensor_info(name, shape, data.dtype, data.nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, is_norm in shapes:
        if is_norm:
            data = np.ones(shape, dtype=np.float32)
        elif len(shape) == 1:
            data = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
        else:
            n = int(np.prod(shape))
            data = np.resize(np.roll(pool, int(rng.integers(pool.size))), n).reshape(shape)
        w.write_tensor_data(data)
    w.close()
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("preset")
    p.add_argument("out", type=pathlib.Path)
    p.add_argument("--quantize", default=None, help="a llama-quantize type (Q4_K_M, Q8_0, ...): also write OUT.<type>.gguf")
    p.add_argument("--llama-bin", type=pathlib.Path, default=None, help="folder holding llama-quantize")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    write_dummy_gguf(a.preset, a.out, a.seed)
    print(f"wrote {a.out}")
    if a.quantize:
        if a.llama_bin is None:
            raise SystemExit("--quantize needs --llama-bin (llama.cpp's build folder)")
        target = a.out.with_suffix(f".{a.quantize}.gguf")
        subprocess.run([str(a.llama_bin / "llama-quantize"), str(a.out), str(target), a.quantize], check=True)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
