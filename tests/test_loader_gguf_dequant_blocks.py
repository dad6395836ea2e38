"""Every block type llama.cpp's converters and llama-quantize write for the
models jevons serves, dequantized from random blocks (random bytes, finite fp16
scales) and compared bit for bit with gguf.quants, llama.cpp's own Python
reference. Random bytes reach every level, sign and scale pattern, which a
round trip through a quantizer would not."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from loader_fixtures import Q, gguf
from jevons.loader import gguf_dequant
from jevons.loader.gguf_reader import GGUFFile

# type -> byte offsets of its fp16 fields (d, and dmin/m where it has one)
HALF_FIELDS = {
    Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,), Q.IQ4_NL: (0,),
    Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,),
}


def random_blocks(kind: gguf.GGMLQuantizationType, n_blocks: int, seed: int) -> np.ndarray:
    elems, nbytes = gguf.GGML_QUANT_SIZES[kind]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
    for off in HALF_FIELDS[kind]:
        sign = rng.choice([-1.0, 1.0], n_blocks)
        half = (sign * rng.uniform(1e-5, 2.0, n_blocks)).astype(np.float16)
        blocks[:, off : off + 2] = half.view(np.uint8).reshape(n_blocks, 2)
    return blocks


def bits(x: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = x.numpy() if isinstance(x, torch.Tensor) else x
    return np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)


def test_every_tested_block_type_has_a_kernel() -> None:
    from jevons.loader.gguf_reader import TESTED_TYPES

    assert set(HALF_FIELDS) == set(gguf_dequant.KERNEL_TYPES)
    assert set(HALF_FIELDS) | {Q.F32, Q.F16, Q.BF16} == set(TESTED_TYPES)


@pytest.mark.parametrize("kind", list(HALF_FIELDS), ids=lambda k: k.name)
def test_random_blocks_bit_exact(kind: gguf.GGMLQuantizationType) -> None:
    elems, nbytes = gguf.GGML_QUANT_SIZES[kind]
    rows, per_row = 6, max(1, 512 // elems)
    blocks = random_blocks(kind, rows * per_row, seed=int(kind))
    raw = blocks.reshape(rows, per_row * nbytes)
    ours = gguf_dequant.dequantize(raw, kind, (rows, per_row * elems))
    reference = gguf.quants.dequantize(raw, kind)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == reference.shape
    assert np.isfinite(reference).all()
    assert np.array_equal(bits(ours), bits(reference))


@pytest.mark.parametrize("kind", [Q.Q2_K, Q.Q3_K, Q.IQ4_NL], ids=lambda k: k.name)
def test_new_types_in_small_steps(kind: gguf.GGMLQuantizationType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bounded-step loop cuts at block boundaries for these types too."""
    elems, nbytes = gguf.GGML_QUANT_SIZES[kind]
    raw = random_blocks(kind, 10, seed=7).reshape(-1)
    whole = gguf_dequant.dequantize(raw, kind, (10 * elems,))
    monkeypatch.setattr(gguf_dequant, "_VALUES_PER_STEP", 3 * elems)
    assert torch.equal(gguf_dequant.dequantize(raw, kind, (10 * elems,)), whole)


def test_float_types_bit_exact_through_the_file(tmp_path: pathlib.Path) -> None:
    """F16 and BF16 (random finite bit patterns) come back in their own dtype,
    and widen to gguf's float32 values bit for bit."""
    rng = np.random.default_rng(3)
    words = rng.integers(0, 1 << 16, (4, 256), dtype=np.uint16)
    words &= ~np.uint16(0x4000)  # clear the top exponent bit: no inf or NaN in either format
    path = tmp_path / "floats.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("t.F16", words.view(np.float16))
    w.add_tensor("t.BF16", words.view(np.uint8), raw_dtype=Q.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = GGUFFile(path)
    for name, kind, dtype in (("t.F16", Q.F16, torch.float16), ("t.BF16", Q.BF16, torch.bfloat16)):
        got = f.read(name)
        assert got.dtype == dtype and tuple(got.shape) == (4, 256)
        reference = gguf.quants.dequantize(words.view(np.uint8) if kind == Q.BF16 else words.view(np.float16), kind)
        assert np.array_equal(bits(got.float()), bits(reference.reshape(4, 256)))
