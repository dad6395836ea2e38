"""The int8 weight-only linear against its plain-torch reference."""
import pytest
import torch

from tiny_models import TiedHead

from jevons import runtime
from jevons.kernels.torch_ref.int8_linear import dequantize_int8, int8_linear, int8_linear_ref, quantize_int8
from jevons.models.layers.linear import QGEMM_ENV, Int8Linear, quantize_model


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_matches_reference(rows, dtype):
    torch.manual_seed(rows)
    w = torch.randn(96, 64)
    b = torch.randn(96).to(dtype)
    q, s = quantize_int8(w)
    x = torch.randn(rows, 64).to(dtype)
    got = int8_linear(x, q, s, b).float()
    ref = int8_linear_ref(x, q, s, b).float()
    tol = 1e-4 if dtype == torch.float32 else 0.05
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * 4)


def test_quantization_error_is_small():
    torch.manual_seed(0)
    w = torch.randn(128, 256)
    q, s = quantize_int8(w)
    err = (dequantize_int8(q, s, torch.float32) - w).abs().max(dim=1).values
    assert bool((err <= s / 2 + 1e-6).all())  # round-to-nearest: half a step at most


def test_quantize_model_swaps_linears_but_not_head():
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())
    m.lm_head = torch.nn.Linear(8, 4)
    assert quantize_model(m, "int8") == 1
    assert isinstance(m[0], Int8Linear) and isinstance(m.lm_head, torch.nn.Linear)


def test_hybrid_dense_path_is_the_dequantized_model_and_quantizes_tied_head(monkeypatch):
    monkeypatch.setenv(QGEMM_ENV, "0")  # PyTorch's kernels; tests/test_qgemm.py covers jevons's
    runtime.configure()  # the JEVONS_* switches are read at start
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    hybrid = Int8Linear(lin, keep_dense=True)
    x = torch.randn(16, 64)
    # Large batch: the dense copy is the exact dequantization (one model on every path).
    torch.testing.assert_close(hybrid(x), int8_linear_ref(x, hybrid.qweight, hybrid.scale, lin.bias), rtol=1e-5, atol=1e-5)
    ref = int8_linear_ref(x[:1], hybrid.qweight, hybrid.scale, lin.bias)
    torch.testing.assert_close(hybrid(x[:1]), ref, rtol=1e-4, atol=1e-4)

    m = TiedHead(10, 8)
    quantize_model(m, "int8-compact")
    h = torch.randn(2, 8)
    torch.testing.assert_close(m.compute_logits(h), h @ m.embed_tokens.weight.T, rtol=0.05, atol=0.05)
