"""The C quantizer (kernels/cpu/qgemm_quant.py) writes exactly the blob the
torch path makes: quantize_int4 + Int4Linear's qgemm.pack (4 bits),
quantize_int8_grouped + qgemm.pack (8 bits)."""
from __future__ import annotations

import pytest
import torch

from jevons.kernels.cpu import qgemm, qgemm_quant
from jevons.kernels.torch_ref.int4_linear import quantize_int4

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
