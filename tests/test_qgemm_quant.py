"""The C quantizer (kernels/cpu/qgemm_quant.py) writes exactly the blob the
torch path makes: quantize_int4 + Int4Linear's qgemm.pack (4 bits),
quantize_int8_grouped + qgemm.pack (8 bits)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from jevons.kernels.cpu import qgemm, qgemm_quant
from jevons.kernels.torch_ref.int4_linear import quantize_int4
from loader_fixtures import encode_tensor

needs_kernel = pytest.mark.skipif(qgemm_quant._fn() is None, reason="needs the C kernel library")


def _reference(w: torch.Tensor, bits: int) -> qgemm.QWeight:
    if bits == 8:
        u, scale = qgemm.quantize_int8_grouped(w)
        return qgemm.pack(u, scale, None, 8)
    q, sz = quantize_int4(w, qgemm.GROUP)
    scale, zero = sz[..., 0].T.float(), sz[..., 1].T.float()
    return qgemm.pack(q, scale, zero - 8 * scale, 4)


def _weights(dtype: torch.dtype) -> torch.Tensor:
    """Groups of every kind: ordinary, wide-range, tiny (half subnormal
    scales), constant (scale 0), zero, with exact ties for the rounding."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) * torch.logspace(-6, 2, 64).unsqueeze(1)
    w[3, :32] = 0.7  # constant group
    w[4, 32:64] = 0.0
    w[5, 64:96] = torch.arange(32) / 2.0 - 8  # halves: ties at the rounding step
    w[6, :32] = -0.0
    return w.to(dtype)


@needs_kernel
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_quantize_writes_the_torch_paths_blob(bits: int, dtype: torch.dtype) -> None:
    w = _weights(dtype)
    got, want = qgemm_quant.quantize(w, bits), _reference(w, bits)
    assert (got.n, got.k, got.bits, got.has_zero) == (want.n, want.k, want.bits, want.has_zero)
    assert torch.equal(got.blob, want.blob.view(got.blob.shape))


@needs_kernel
def test_a_strided_weight_and_unfit_shapes() -> None:
    w = _weights(torch.float32)
    wide = torch.zeros(64, 512)
    wide[:, :256] = w
    assert torch.equal(qgemm_quant.quantize(wide[:, :256], 4).blob, _reference(w, 4).blob.view(-1).view(
        qgemm_quant.quantize(w, 4).blob.shape))
    assert qgemm_quant.quantize(torch.zeros(24, 64), 4) is None and qgemm_quant.quantize(torch.zeros(32, 48), 8) is None


def _stored(kind, n: int, k: int) -> np.ndarray:
    """Random stored bytes of `kind` with sane half scales (any level bits are valid)."""
    elems, nbytes = qgemm_quant.BLOCK_KINDS[int(kind)]
    rng = np.random.default_rng(int(kind))
    if elems == 1:  # plain floats
        return encode_tensor(rng.standard_normal((n, k)).astype(np.float32), kind).view(np.uint8).reshape(n, -1) \
            if kind != Q.BF16 else torch.randn(n, k).to(torch.bfloat16).view(torch.uint16).numpy().view(np.uint8)
    b = rng.integers(0, 256, (n * (k // elems), nbytes), dtype=np.uint8)
    at = {Q.Q8_0: [0], Q.Q5_0: [0], Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q4_K: [0, 2], Q.Q6_K: [208]}[kind]
    for off in at:
        b[:, off:off + 2] = rng.uniform(-0.05, 0.05, len(b)).astype(np.float16).view(np.uint8).reshape(-1, 2)
    b[::7, at[0]:at[0] + 2] = 0  # some zero scales: constant groups
    return b.reshape(n, -1)


KINDS = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q5_0, Q.Q4_K, Q.Q6_K]


def _loader_dequant(raw: np.ndarray, kind, n: int, k: int) -> torch.Tensor:
    from jevons.loader.gguf_header import TensorView
    from jevons.loader.gguf_reader import dequantize_tensor

    data = raw.view(np.float32) if kind == Q.F32 else raw.view(np.float16) if kind == Q.F16 else raw
    return dequantize_tensor(TensorView("t", np.array([k, n], dtype=np.uint64), kind, data))


@needs_kernel
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dequantize_blocks_is_the_loaders(kind, dtype: torch.dtype) -> None:
    n, k = 48, 512
    raw = _stored(kind, n, k)
    out = torch.empty(n, k, dtype=dtype)
    assert qgemm_quant.dequantize_blocks(raw, int(kind), out)
    assert torch.equal(out, _loader_dequant(raw, kind, n, k).to(dtype))


@needs_kernel
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_stored_blocks_quantize_as_their_dequantization(kind, dtype: torch.dtype) -> None:
    """quantize_blocks == the loader's dequantization (gguf_dequant, bit for
    bit gguf's), cast to the model dtype, through the torch path."""
    n, k = 48, 512
    raw = _stored(kind, n, k)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    dense = _loader_dequant(raw, kind, n, k).to(dtype)[rows]
    for bits in (4, 8):
        got = qgemm_quant.quantize_blocks(raw, int(kind), n, k, rows, dtype, bits)
        want = _reference(dense, bits)
        assert torch.equal(got.blob, want.blob.view(got.blob.shape)), bits


@needs_kernel
@pytest.mark.parametrize("kind", [Q.Q6_K, Q.Q4_K, Q.F32], ids=lambda k: k.name)
def test_threads_and_out_do_not_change_the_bytes(kind) -> None:
    """quantize_blocks and dequantize_blocks split rows across OpenMP threads:
    1, 2 or 3 threads give the same bytes, and a blob written into a slice
    of a larger one (out=, a fused layer's part) is the blob made alone."""
    n, k = 80, 512
    raw = _stored(kind, n, k)
    old = torch.get_num_threads()
    try:
        got = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            deq = torch.empty(n, k)
            assert qgemm_quant.dequantize_blocks(raw, int(kind), deq)
            got.append([qgemm_quant.quantize_blocks(raw, int(kind), n, k, None, torch.float32, bits).blob
                        for bits in (4, 8)] + [deq])
    finally:
        torch.set_num_threads(old)
    for other in got[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got[0], other))
    big = torch.zeros(n // qgemm.TILE + 2, *got[0][0].shape[1:], dtype=torch.uint8)
    q = qgemm_quant.quantize_blocks(raw, int(kind), n, k, None, torch.float32, 4, out=big[1:-1])
    assert q.blob.data_ptr() == big[1].data_ptr() and torch.equal(big[1:-1], got[0][0])
    assert not big[0].any() and not big[-1].any()


@needs_kernel
@pytest.mark.parametrize("kind", [Q.Q4_K, Q.Q6_K, Q.Q8_0], ids=lambda k: k.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dequantize_blocks_looks_rows_up(kind, dtype: torch.dtype) -> None:
    """rows=: the rows of the whole dequantization (runner/direct_load.StoredEmbedding's lookup), repeats and
    any order; an id outside the stored rows is an IndexError, not a read past the tensor."""
    n, k = 48, 512
    raw = _stored(kind, n, k)
    whole = torch.empty(n, k, dtype=dtype)
    assert qgemm_quant.dequantize_blocks(raw, int(kind), whole)
    ids = torch.tensor([47, 0, 5, 5, 30, 1])
    got = torch.empty(len(ids), k, dtype=dtype)
    assert qgemm_quant.dequantize_blocks(raw, int(kind), got, rows=ids)
    assert torch.equal(got, whole[ids])
    for bad in ([48], [-1]):
        with pytest.raises(IndexError):
            qgemm_quant.dequantize_blocks(raw, int(kind), torch.empty(1, k, dtype=dtype), rows=torch.tensor(bad))
