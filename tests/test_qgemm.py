"""jevons's group-quantized GEMM (kernels/cpu/qgemm.py, csrc/qgemm.c) against
its plain-torch reference, and the linear layers that use it."""
from __future__ import annotations

import pytest
import torch

from jevons import runtime
from jevons.kernels.cpu import qgemm
from jevons.kernels.torch_ref.int4_linear import quantize_int4
from jevons.models.layers.linear import Int4Linear, Int8Linear, use_qgemm

needs_kernel = pytest.mark.skipif(not qgemm.available(), reason="needs the C kernels with AVX2 or AVX512-VNNI")


def _weights(n: int, k: int, bits: int, seed: int = 0) -> qgemm.QWeight:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    if bits == 4:
        q, sz = quantize_int4(w, 32)
        return qgemm.pack(q, sz[..., 0].T, sz[..., 1].T, 4)
    u, scale = qgemm.quantize_int8_grouped(w)
    return qgemm.pack(u, scale, None, 8)


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_roundtrip_and_dequantize(bits):
    g = torch.Generator().manual_seed(1)
    n, k = 48, 96
    u = torch.randint(0, 2**bits, (n, k), generator=g, dtype=torch.uint8)
    scale, zero = torch.rand(n, k // 32, generator=g), torch.randn(n, k // 32, generator=g)
    qw = qgemm.pack(u, scale, zero, bits)
    assert qw.blob.dtype == torch.uint8 and qw.blob.numel() == n * k * bits // 8 + n * (k // 32) * 4
    uu, ss, zz = qgemm.unpack(qw)
    assert torch.equal(uu, u)
    assert torch.equal(ss, scale.to(torch.float16)) and torch.equal(zz, zero.to(torch.float16))  # half, as ggml
    w = qgemm.dequantize(qw, torch.float32)
    want = (u.float() - qgemm.OFFSET[bits]) * ss.float().repeat_interleave(32, 1) + zz.float().repeat_interleave(32, 1)
    torch.testing.assert_close(w, want)


def _q4_0(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_0's grid as levels: u = q in 0..15, scale d, zero -8 d (so w = (q - 8) d)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scale = (torch.rand(n, k // 32, generator=g) + 0.01).to(torch.float16).float()
    return u, scale, -8 * scale


def test_symmetric_grids_store_no_zeros():
    """Q4_0's and Q8_0's blobs are 4.5 and 8.5 bits a weight (no zeros), the
    same weights as with zeros; a blob with zeros joins them through with_zeros."""
    n, k = 48, 128
    u, scale, zero = _q4_0(n, k, seed=5)
    qw = qgemm.pack(u, scale, zero, 4)
    assert not qw.has_zero and qw.blob.numel() * 8 == n * k * 4.5
    assert qw.blob.shape[-1] == qgemm.group_bytes(4, False)
    want = ((u.float() - 8) * scale.repeat_interleave(32, 1))
    torch.testing.assert_close(qgemm.dequantize(qw, torch.float32), want, rtol=0, atol=0)
    full = qgemm.with_zeros(qw)
    assert full.has_zero and full.blob.numel() * 8 == n * k * 5
    torch.testing.assert_close(qgemm.dequantize(full, torch.float32), want, rtol=0, atol=0)
    assert qgemm.pack(u, scale, zero, 4, keep_zeros=True).has_zero
    assert qgemm.pack(u, scale, zero + scale, 4).has_zero  # a real zero stays
    u8, s8 = qgemm.quantize_int8_grouped(torch.randn(n, k))
    q8 = qgemm.pack(u8, s8, torch.zeros_like(s8), 8)
    assert not q8.has_zero and q8.blob.numel() * 8 == n * k * 8.5


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 32, 1), (64, 1536, 3), (96, 160, 9), (48, 64, 17)])
def test_kernel_matches_reference_without_zeros(dtype, shape):
    """4-bit levels at offset 8 (the integer start, not a float zero term)."""
    n, k, rows = shape
    u, scale, zero = _q4_0(n, k, seed=6)
    qw = qgemm.pack(u, scale, zero, 4)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(7)).to(dtype)
    got, want = qgemm.qgemm(x, qw), qgemm.qgemm_ref(x, qw)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.float().abs().max().item())
    torch.testing.assert_close(got.float(), qgemm.qgemm(x, qgemm.with_zeros(qw)).float(), rtol=tol,
                               atol=tol * want.float().abs().max().item())


def test_int8_grouped_recovers_a_q8_0_grid():
    g = torch.Generator().manual_seed(2)
    q = torch.randint(-127, 128, (32, 64), generator=g).float()
    d = (torch.rand(32, 2, generator=g) + 0.01).to(torch.bfloat16).float()
    w = q * d.repeat_interleave(32, 1)
    w[:, 0], w[:, 32] = 127 * d[:, 0], 127 * d[:, 1]  # every group reaches the full range
    u, scale = qgemm.quantize_int8_grouped(w)
    torch.testing.assert_close(qgemm.dequantize(qgemm.pack(u, scale, None, 8), torch.float32), w)


@needs_kernel
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 32, 1), (576, 576, 1), (64, 1536, 3), (96, 160, 9), (48, 64, 17)])
def test_kernel_matches_reference(bits, dtype, shape):
    n, k, rows = shape
    qw = _weights(n, k, bits)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(rows, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    for b in (None, bias):
        got, want = qgemm.qgemm(x, qw, b), qgemm.qgemm_ref(x, qw, b)
        tol = 1e-4 if dtype == torch.float32 else 1e-2  # accumulation order; one bf16 ulp
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.abs().max().item())


@needs_kernel
def test_kernel_reads_strided_rows_and_zero_groups():
    qw = _weights(32, 64, 4)
    x = torch.randn(5, 128)[:, ::2]  # inner stride 2: copied
    torch.testing.assert_close(qgemm.qgemm(x, qw), qgemm.qgemm_ref(x, qw), rtol=1e-4, atol=1e-4)
    rows = torch.randn(4, 100)[:, :64]  # row stride 100, inner stride 1: read in place
    torch.testing.assert_close(qgemm.qgemm(rows, qw), qgemm.qgemm_ref(rows, qw), rtol=1e-4, atol=1e-4)
    zeros = torch.zeros(2, 64)  # amax 0: no division by zero, only the zero term (0 here)
    assert torch.equal(qgemm.qgemm(zeros, qw), torch.zeros(2, 32))
    batched = torch.randn(2, 3, 64)
    assert qgemm.qgemm(batched, qw).shape == (2, 3, 32)


def test_reference_is_close_to_the_exact_product():
    """Activation rounding (int8 per group of 32) costs well under 1% here."""
    qw = _weights(64, 256, 8)
    x = torch.randn(4, 256)
    exact = x @ qgemm.dequantize(qw, torch.float32).T
    err = (qgemm.qgemm_ref(x, qw) - exact).abs().max() / exact.abs().max()
    assert err < 0.01


@pytest.mark.parametrize("bits", [4, 8])
def test_product_is_the_true_weights_times_the_rounded_activations(bits):
    """With a zero (Q4_1, our own int4: levels 0..15 plus a min), the zero
    term uses the rounded activations' sum, so the result is exactly W times
    the rounded x, as ggml's Q4_1 x Q8_1 dot. Summing the exact x there
    instead left the rounding error against the uncentered levels u * scale,
    a larger error (on SmolLM2's Q4_1 file: 1.26% perplexity over llama.cpp's,
    against -0.27% now)."""
    g = torch.Generator().manual_seed(3)
    n, k = 64, 256
    w = torch.randn(n, k, generator=g) * 0.05
    if bits == 4:  # Q4_1's grid: w = u * scale + min, u in 0..15
        wg = w.view(n, k // 32, 32)
        lo, hi = wg.amin(-1), wg.amax(-1)
        scale = ((hi - lo) / 15).half().float()
        u = torch.round((wg - lo.half().float()[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
        qw = qgemm.pack(u.view(n, k), scale, lo, 4)
    else:
        u, scale = qgemm.quantize_int8_grouped(w)
        qw = qgemm.pack(u, scale, torch.full_like(scale, 0.01), 8)  # a zero on the 8-bit grid too
    x = torch.randn(5, k, generator=g) * 3
    xq, d = qgemm.quantize_activations(x)
    rounded = (xq * d[..., None]).reshape(5, k).double()
    want = rounded @ qgemm.dequantize(qw, torch.float64).T
    torch.testing.assert_close(qgemm.qgemm_ref(x, qw).double(), want, rtol=1e-5, atol=1e-5)
    if qgemm.available():
        torch.testing.assert_close(qgemm.qgemm(x, qw).double(), want, rtol=1e-4, atol=1e-4)
    # The error left is the activations' rounding against the true weights:
    # smaller than against the uncentered levels (the old zero term).
    exact = x.double() @ qgemm.dequantize(qw, torch.float64).T
    uncentered = qgemm.dequantize(qw, torch.float64) - qgemm.unpack(qw)[2].double().repeat_interleave(32, 1)
    old = exact + (rounded - x.double()) @ uncentered.T
    if bits == 4:
        assert (want - exact).abs().mean() < (old - exact).abs().mean()


@needs_kernel
@pytest.mark.parametrize("cls", [Int4Linear, Int8Linear])
def test_linears_run_the_kernel_at_every_row_count_row_independently(cls):
    """One model on every path: no dense copy, the kernel for 1 row or 300,
    and a row's result does not depend on the rows beside it (bitwise)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    assert use_qgemm(lin.weight)
    for layer in (cls(lin, keep_dense=True), cls(lin)):
        assert layer.qw is not None and layer.dense is None
        small, big = torch.randn(2, 64), torch.randn(300, 64)
        torch.testing.assert_close(layer(small), qgemm.qgemm_ref(small, layer.qw, lin.bias), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(layer(big), qgemm.qgemm_ref(big, layer.qw, lin.bias), rtol=1e-4, atol=1e-4)
        alone = torch.cat([layer(big[i : i + 1]) for i in range(0, 300, 37)])
        assert torch.equal(alone, layer(big)[0:300:37])


@needs_kernel
def test_shapes_the_kernel_does_not_take_keep_pytorch_formats(monkeypatch):
    assert not use_qgemm(torch.empty(24, 64)) and not use_qgemm(torch.empty(32, 48))
    layer = Int8Linear(torch.nn.Linear(64, 24))
    assert layer.qw is None and layer.qweight.dtype == torch.int8
    monkeypatch.setenv("JEVONS_QGEMM", "0")
    runtime.configure()  # the JEVONS_* switches are read at start
    assert Int4Linear(torch.nn.Linear(64, 32)).qw is None
