"""Our GGUF dequantizers against gguf.quants (numpy, llama.cpp's Python
reference) and, for K-quants, transformers' independent torch implementation."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from loader_fixtures import Q, encode_tensor, gguf
from jevons.loader import gguf_dequant
from jevons.loader.gguf_reader import GGUFFile

# Types gguf.quants can quantize, and the worst-case error of one round trip
# relative to the largest magnitude in a block.
ROUND_TRIP = {Q.Q8_0: 1 / 127, Q.Q4_0: 1 / 7, Q.Q4_1: 1 / 7, Q.Q5_0: 1 / 15, Q.Q5_1: 1 / 15}
# Super-block types gguf.quants cannot quantize: fed random (but valid) blocks.
K_QUANTS = {Q.Q4_K: (144, (0, 2)), Q.Q5_K: (176, (0, 2)), Q.Q6_K: (210, (208,))}


@pytest.mark.parametrize("kind", list(ROUND_TRIP), ids=lambda k: k.name)
def test_block_types_round_trip(kind: gguf.GGMLQuantizationType) -> None:
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((48, 256)) * rng.uniform(0.01, 3.0, (48, 1))).astype(np.float32)
    raw = gguf.quants.quantize(values, kind)
    ours = gguf_dequant.dequantize(raw, kind, values.shape)
    reference = torch.from_numpy(gguf.quants.dequantize(raw, kind).copy())
    assert ours.dtype == torch.float32 and ours.shape == values.shape
    assert torch.equal(ours, reference)
    # And it is actually close to the data that was quantized.
    scale = np.abs(values.reshape(-1, 32)).max(axis=1, keepdims=True)
    err = np.abs(ours.numpy().reshape(-1, 32) - values.reshape(-1, 32))
    assert (err <= scale * ROUND_TRIP[kind] * 1.01 + 1e-6).all()


def _random_k_blocks(kind: gguf.GGMLQuantizationType, n_blocks: int, seed: int) -> np.ndarray:
    nbytes, half_offsets = K_QUANTS[kind]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
    for off in half_offsets:  # finite, realistic fp16 super-scales
        scales = rng.uniform(1e-4, 0.05, n_blocks).astype(np.float16)
        blocks[:, off : off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks


@pytest.mark.parametrize("kind", list(K_QUANTS), ids=lambda k: k.name)
def test_k_quants_match_references(kind: gguf.GGMLQuantizationType) -> None:
    blocks = _random_k_blocks(kind, n_blocks=96, seed=int(kind))
    raw = blocks.reshape(8, -1)  # 8 rows of 12 super-blocks (3072 values each)
    ours = gguf_dequant.dequantize(raw, kind, (8, 12 * 256))
    numpy_ref = torch.from_numpy(gguf.quants.dequantize(raw, kind).copy())
    assert torch.equal(ours, numpy_ref)
    hf = pytest.importorskip("transformers.integrations.gguf.dequant")
    torch_ref = hf.dequantize(torch.from_numpy(blocks.copy()).reshape(-1), int(kind)).reshape(8, -1)
    torch.testing.assert_close(ours, torch_ref, rtol=1e-6, atol=1e-7)


def test_chunked_path_matches_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dequantizing in bounded steps gives the same tensor as one big step."""
    values = np.random.default_rng(1).standard_normal((40, 64)).astype(np.float32)
    raw = gguf.quants.quantize(values, Q.Q4_1)
    whole = gguf_dequant.dequantize(raw, Q.Q4_1, values.shape)
    monkeypatch.setattr(gguf_dequant, "_VALUES_PER_STEP", 7 * 32)
    assert torch.equal(gguf_dequant.dequantize(raw, Q.Q4_1, values.shape), whole)


def test_file_round_trip_every_type(tmp_path: pathlib.Path) -> None:
    """Write one tensor of every supported type with gguf.GGUFWriter and read it
    back through GGUFFile: checks dims come back in torch order (GGUF stores
    them reversed) and the float types are exact."""
    rng = np.random.default_rng(2)
    values = rng.standard_normal((6, 512)).astype(np.float32)
    path = tmp_path / "types.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    kinds = [Q.F32, Q.F16, Q.BF16, *ROUND_TRIP]
    for kind in kinds:
        w.add_tensor(f"t.{kind.name}", encode_tensor(values, kind), raw_dtype=kind)
    k_raw = {kind: _random_k_blocks(kind, 12, 3).reshape(6, -1) for kind in K_QUANTS}
    for kind, raw in k_raw.items():
        w.add_tensor(f"t.{kind.name}", raw, raw_dtype=kind)
    w.add_tensor("t.F32_3d", values.reshape(2, 3, 512))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    f = GGUFFile(path)
    assert torch.equal(f.read("t.F32"), torch.from_numpy(values))
    assert torch.equal(f.read("t.F16"), torch.from_numpy(values.astype(np.float16)))
    bf16 = f.read("t.BF16")
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), torch.from_numpy(values), rtol=1 / 128, atol=0)
    assert f.read("t.F32_3d").shape == (2, 3, 512)
    for kind in ROUND_TRIP:
        raw = gguf.quants.quantize(values, kind)
        assert torch.equal(f.read(f"t.{kind.name}"), torch.from_numpy(gguf.quants.dequantize(raw, kind).copy()))
    for kind, raw in k_raw.items():
        got = f.read(f"t.{kind.name}")
        assert got.shape == (6, 512) and f.tensor_shape(f"t.{kind.name}") == (6, 512)
        assert torch.equal(got, torch.from_numpy(gguf.quants.dequantize(raw, kind).copy()))
