"""A GGUF's 4- and 8-bit blocks become the served weights as they are: the
levels, scales and zeros of Q4_0, Q4_1 and Q8_0 repack into qgemm's layout
without rounding (Q4_K: its two scale products rounded once to half)."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from loader_fixtures import Q, encode_tensor, tiny_hf_model, write_model_gguf
from jevons.config import ModelConfig
from jevons.kernels.cpu import qgemm
from jevons.loader import gguf_dequant
from jevons.loader.gguf_checkpoint import GGUFCheckpoint
from jevons.loader.gguf_quant import levels_from_blocks
from jevons.models.layers import linear as linear_mod
from jevons.models.layers.linear import Int4Linear, Int8Linear, quantize_model
from jevons.runner.model_loader import load_model


def _dequant_levels(levels) -> torch.Tensor:
    zero = None if levels.bits == 8 and not levels.zero.any() else levels.zero
    return qgemm.dequantize(qgemm.pack(levels.u, levels.scale, zero, levels.bits), torch.float32)


@pytest.mark.parametrize("kind", [Q.Q4_0, Q.Q4_1, Q.Q8_0], ids=lambda k: k.name)
def test_legacy_blocks_repack_bit_exactly(kind) -> None:
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((48, 256)) * rng.uniform(0.01, 3.0, (48, 1))).astype(np.float32)
    raw = encode_tensor(values, kind)
    levels = levels_from_blocks(raw, kind, values.shape)
    assert levels is not None and levels.bits == (8 if kind == Q.Q8_0 else 4)
    assert torch.equal(_dequant_levels(levels), gguf_dequant.dequantize(raw, kind, values.shape))


def test_q4_k_repacks_with_half_rounded_scales() -> None:
    rng = np.random.default_rng(1)
    n_rows, per_row = 16, 2  # 16 rows of 2 super-blocks (512 values each)
    blocks = rng.integers(0, 256, (n_rows * per_row, 144), dtype=np.uint8)
    for off in (0, 2):
        blocks[:, off : off + 2] = rng.uniform(1e-4, 0.05, len(blocks)).astype(np.float16).view(np.uint8).reshape(-1, 2)
    raw = blocks.reshape(n_rows, -1)
    levels = levels_from_blocks(raw, Q.Q4_K, (n_rows, per_row * 256))
    want = gguf_dequant.dequantize(raw, Q.Q4_K, (n_rows, per_row * 256))
    got = _dequant_levels(levels)
    step = levels.scale.abs().repeat_interleave(32, 1) + levels.zero.abs().repeat_interleave(32, 1)
    assert ((got - want).abs() <= 16 * step * 2**-11).all()


def test_other_types_have_no_exact_mapping() -> None:
    values = np.random.default_rng(2).standard_normal((16, 256)).astype(np.float32)
    assert levels_from_blocks(encode_tensor(values, Q.Q5_0), Q.Q5_0, values.shape) is None
    assert levels_from_blocks(values, Q.F32, values.shape) is None


@pytest.mark.parametrize("tie", [False, True])
def test_a_q4_1_gguf_serves_its_own_levels(tmp_path: pathlib.Path, monkeypatch, tie: bool) -> None:
    """Every layer of a Q4_1 file (Q8_0 embedding) quantized at int4 holds
    exactly the file's weights: fused q/k/v and gate/up, llama's un-permuted
    q/k rows, and the int8 head from the Q8_0 embedding or output."""
    monkeypatch.setattr(linear_mod, "use_qgemm", lambda w: True)  # the kernel's scalar path runs anywhere
    path = tmp_path / "q41.gguf"
    write_model_gguf(path, "llama", tiny_hf_model("llama", tie=tie), {"embed_tokens": Q.Q8_0, "lm_head": Q.Q8_0,
                                                                      "proj": Q.Q4_1})
    ckpt = GGUFCheckpoint(path)
    dense = dict(ckpt.iter_weights(torch.float32))
    cfg = ModelConfig.from_hf(ckpt.config)
    model = load_model(cfg, ckpt.iter_weights(torch.float32), torch.float32, torch.device("cpu"), None, False)
    quantize_model(model, "int4", levels_for=ckpt.quantized_levels)
    attn, mlp = model.layers[1].self_attn, model.layers[1].mlp
    assert isinstance(attn.qkv_proj, Int4Linear) and isinstance(mlp.gate_up_proj, Int4Linear)
    qkv = torch.cat([dense[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(qgemm.dequantize(attn.qkv_proj.qw, torch.float32), qkv)
    gate_up = torch.cat([dense[f"model.layers.1.mlp.{p}_proj.weight"] for p in ("gate", "up")])
    assert torch.equal(qgemm.dequantize(mlp.gate_up_proj.qw, torch.float32), gate_up)
    assert torch.equal(qgemm.dequantize(mlp.down_proj.qw, torch.float32), dense["model.layers.1.mlp.down_proj.weight"])
    head = dense["model.embed_tokens.weight" if tie else "lm_head.weight"]
    assert isinstance(model.fast_head, Int8Linear)
    assert torch.equal(qgemm.dequantize(model.fast_head.qw, torch.float32), head)
    # And the layers compute with them: a forward matches the reference on the same levels.
    x = torch.randn(3, 256)
    torch.testing.assert_close(attn.qkv_proj(x), qgemm.qgemm_ref(x, attn.qkv_proj.qw), rtol=1e-4, atol=1e-4)
