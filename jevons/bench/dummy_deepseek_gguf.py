"""A DeepSeek-V2-Lite-shaped GGUF with random weights, written the way
llama.cpp's converter lays out `deepseek2` (3-D expert tensors, kv_b split
into attn_k_b / attn_v_b, the router in F32), then quantized by llama.cpp's
own `llama-quantize`, so both engines read the identical file:

    python -m jevons.bench.dummy_deepseek_gguf /tmp/v2lite.gguf \
        --quantize Q4_K_M --llama-bin ~/.cache/jevons/peers/<llama.cpp>/bin [--layers 4]

Every dimension is the `deepseek-v2-lite` preset's (hidden 2048, 16 heads,
kv_lora 512, no query compression, 64 routed experts of 1408, top-6, 2
shared, a 10944-wide first dense layer, 102400-token vocabulary, YaRN x40).

Matrices are written as Q8_0 blocks drawn directly (int8 levels ~ N(0, 40)
clipped, a scale near 0.02/40 per block: weights of std ~0.02), cut from one
pool of blocks at random offsets, one tensor at a time: no float staging file
(the F16 one would be 31 GB) and a peak of one tensor in memory (the largest,
an expert stack, is 0.2 GB). `llama-quantize --allow-requantize` then turns it
into Q4_K_M or Q4_0.

Layers: llama.cpp (0.3.36's deepseek2.cpp) treats a file as "lite" (q_proj,
no q_lora) only at 26 or 27 layers, but reads `attention.q_lora_rank` when
present and builds a q_proj layer when it is 0; other layer counts get that
key, so a cut-down file is the same V2-Lite architecture to both engines.
The tokenizer is SmolLM2's padded to 102400 (jevons.bench.dummy_gguf)."""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
from typing import Any

import numpy as np

from jevons.bench.dummy_gguf import _tokenizer

Q8_BLOCK, Q8_BYTES = 32, 34


def _tensors(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...], str]]:
    """(llama.cpp name, torch-order shape, kind: "ones" | "f32" | "q8") in the converter's order."""
    h, layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    heads, rank = int(cfg["num_attention_heads"]), int(cfg["kv_lora_rank"])
    nope, rope, v = int(cfg["qk_nope_head_dim"]), int(cfg["qk_rope_head_dim"]), int(cfg["v_head_dim"])
    e, mi, shared = int(cfg["n_routed_experts"]), int(cfg["moe_intermediate_size"]), int(cfg["n_shared_experts"])
    vocab = int(cfg["vocab_size"])
    out: list[tuple[str, tuple[int, ...], str]] = [("token_embd.weight", (vocab, h), "q8")]
    for i in range(layers):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", (h,), "ones"),
            (b + "attn_q.weight", (heads * (nope + rope), h), "q8"),
            (b + "attn_kv_a_mqa.weight", (rank + rope, h), "q8"),
            (b + "attn_kv_a_norm.weight", (rank,), "ones"),
            (b + "attn_k_b.weight", (heads, rank, nope), "q8"),
            (b + "attn_v_b.weight", (heads, v, rank), "q8"),
            (b + "attn_output.weight", (h, heads * v), "q8"),
            (b + "ffn_norm.weight", (h,), "ones"),
        ]
        if i < int(cfg["first_k_dense_replace"]):
            inter = int(cfg["intermediate_size"])
            out += [(b + "ffn_gate.weight", (inter, h), "q8"), (b + "ffn_up.weight", (inter, h), "q8"),
                    (b + "ffn_down.weight", (h, inter), "q8")]
        else:
            out += [
                (b + "ffn_gate_inp.weight", (e, h), "f32"),
                (b + "ffn_gate_exps.weight", (e, mi, h), "q8"),
                (b + "ffn_up_exps.weight", (e, mi, h), "q8"),
                (b + "ffn_down_exps.weight", (e, h, mi), "q8"),
                (b + "ffn_gate_shexp.weight", (mi * shared, h), "q8"),
                (b + "ffn_up_shexp.weight", (mi * shared, h), "q8"),
                (b + "ffn_down_shexp.weight", (h, mi * shared), "q8"),
            ]
    out += [("output_norm.weight", (h,), "ones"), ("output.weight", (vocab, h), "q8")]
    return out


def _metadata(w: Any, cfg: dict[str, Any]) -> None:
    import gguf

    layers = int(cfg["num_hidden_layers"])
    w.add_block_count(layers)
    w.add_context_length(int(cfg["max_position_embeddings"]))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(int(cfg["num_attention_heads"]))
    w.add_head_count_kv(1)  # MLA written as MQA, as the converter does
    w.add_rope_freq_base(float(cfg["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_expert_used_count(int(cfg["num_experts_per_tok"]))
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
    w.add_leading_dense_block_count(int(cfg["first_k_dense_replace"]))
    w.add_vocab_size(int(cfg["vocab_size"]))
    if layers not in (26, 27):
        w.add_q_lora_rank(0)  # llama.cpp's "lite" test is by layer count; 0 says the same
    rank, rope = int(cfg["kv_lora_rank"]), int(cfg["qk_rope_head_dim"])
    w.add_kv_lora_rank(rank)
    w.add_key_length(rank + rope)
    w.add_value_length(rank)
    w.add_key_length_mla(int(cfg["qk_nope_head_dim"]) + rope)
    w.add_value_length_mla(int(cfg["v_head_dim"]))
    w.add_expert_feed_forward_length(int(cfg["moe_intermediate_size"]))
    w.add_expert_count(int(cfg["n_routed_experts"]))
    w.add_expert_shared_count(int(cfg["n_shared_experts"]))
    w.add_expert_weights_scale(float(cfg["routed_scaling_factor"]))
    w.add_rope_dimension_count(rope)
    rs = cfg["rope_scaling"]
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(float(rs["factor"]))
    w.add_rope_scaling_orig_ctx_len(int(rs["original_max_position_embeddings"]))
    w.add_rope_scaling_yarn_beta_fast(float(rs["beta_fast"]))
    w.add_rope_scaling_yarn_beta_slow(float(rs["beta_slow"]))
    w.add_rope_scaling_yarn_log_mul(0.1 * float(rs["mscale_all_dim"]))
    w.add_file_type(7)  # LLAMA_FTYPE_MOSTLY_Q8_0


def _block_pool(rng: np.random.Generator, blocks: int) -> np.ndarray:
    """[blocks, 34] Q8_0 blocks: a half scale near 0.02 / 40, then 32 int8 levels."""
    pool = np.empty((blocks, Q8_BYTES), dtype=np.uint8)
    d = (0.02 / 40 * (0.75 + 0.5 * rng.random(blocks, dtype=np.float32))).astype(np.float16)
    pool[:, :2] = d.view(np.uint8).reshape(blocks, 2)
    q = np.clip(np.rint(rng.standard_normal((blocks, Q8_BLOCK), dtype=np.float32) * 40), -127, 127)
    pool[:, 2:] = q.astype(np.int8).view(np.uint8)
    return pool


def write_v2_lite_gguf(path: pathlib.Path, layers: int | None = None, seed: int = 0) -> pathlib.Path:
    import gguf

    from jevons.loader.presets import get_preset

    cfg = dict(get_preset("deepseek-v2-lite"))
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    w = gguf.GGUFWriter(str(path), "deepseek2")
    w.add_name(f"DeepSeek-V2-Lite shape, {cfg['num_hidden_layers']} layers (random weights)")
    _metadata(w, cfg)
    _tokenizer(w, int(cfg["vocab_size"]), cfg)
    tensors = _tensors(cfg)
    rng = np.random.default_rng(seed)
    # 4M + 7 blocks (136 MB): no row of any tensor lines up with the pool's period.
    pool = _block_pool(rng, (1 << 22) + 7)

    def data(shape: tuple[int, ...], kind: str) -> np.ndarray:
        if kind == "ones":
            return np.ones(shape, dtype=np.float32)
        if kind == "f32":
            return rng.standard_normal(shape, dtype=np.float32) * 0.02
        nblocks = int(np.prod(shape)) // Q8_BLOCK
        start = int(rng.integers(pool.shape[0]))
        blocks = np.concatenate([pool[start:], pool[:start]]) if nblocks > pool.shape[0] - start else pool[start:]
        return np.resize(blocks, (nblocks, Q8_BYTES)).reshape(*shape[:-1], shape[-1] // Q8_BLOCK * Q8_BYTES)

    for name, shape, kind in tensors:
        if kind == "q8":
            byte_shape = (*shape[:-1], shape[-1] // Q8_BLOCK * Q8_BYTES)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, shape, kind in tensors:
        w.write_tensor_data(data(shape, kind))
    w.close()
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=pathlib.Path)
    p.add_argument("--layers", type=int, default=None, help="default: the preset's 27")
    p.add_argument("--quantize", default=None, help="a llama-quantize type (Q4_K_M, Q4_0): also write OUT.<type>.gguf")
    p.add_argument("--llama-bin", type=pathlib.Path, default=None, help="folder holding llama-quantize")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    write_v2_lite_gguf(a.out, a.layers, a.seed)
    print(f"wrote {a.out}")
    if a.quantize:
        if a.llama_bin is None:
            raise SystemExit("--quantize needs --llama-bin (llama.cpp's build folder)")
        target = a.out.with_suffix(f".{a.quantize}.gguf")
        subprocess.run([str(a.llama_bin / "llama-quantize"), "--allow-requantize", str(a.out), str(target),
                        a.quantize, str(a.threads)], check=True)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
