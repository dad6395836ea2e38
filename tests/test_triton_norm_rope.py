"""Triton fused RMSNorm (+ residual) and RoPE against the torch layers,
under the interpreter on CPU."""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

import pytest
import torch

pytest.importorskip("triton")
# TRITON_INTERPRET=0 on a GPU machine runs the same tests on the compiled kernels.
DEVICE = torch.device("cpu" if os.environ["TRITON_INTERPRET"] == "1" else "cuda")
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("TRITON_INTERPRET=0 needs a CUDA device", allow_module_level=True)

from jevons.kernels.triton import rmsnorm, rope  # noqa: E402
from jevons.kernels.registry import torch_rms_norm  # noqa: E402  (RMSNorm.forward's torch arithmetic)
from jevons.models.layers.rotary import RotaryEmbedding, apply_rotary  # noqa: E402


@pytest.mark.parametrize("shape", [(1, 32), (7, 48), (2, 3, 40)])  # batch 1, odd hidden, 3-d input
def test_triton_rms_norm_matches_torch(shape):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape[-1], generator=g).to(DEVICE)
    x = (torch.randn(*shape, generator=g) * 3).to(DEVICE)
    torch.testing.assert_close(rmsnorm.rms_norm(x, w, 1e-6), torch_rms_norm(x, w, 1e-6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_fused_add_rms_norm(dtype):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, generator=g).to(dtype).to(DEVICE)
    x = torch.randn(5, 40, generator=g).to(dtype).to(DEVICE)
    res = torch.randn(5, 40, generator=g).to(dtype).to(DEVICE)
    out, new_res = rmsnorm.fused_add_rms_norm(x, res, w, 1e-5)
    want_res = x + res
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(new_res, want_res, **tol)
    torch.testing.assert_close(out, torch_rms_norm(want_res, w, 1e-5), **tol)
    assert out.dtype == dtype and new_res.dtype == dtype


@pytest.mark.parametrize("hq,hk,d", [(4, 2, 16), (3, 1, 6)])  # GQA; MLA-like single rope key, odd half
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_rope_matches_torch(hq, hk, d, dtype):
    g = torch.Generator().manual_seed(2)
    rot = RotaryEmbedding(d, 64, 10000.0, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16})
    rot.to_device(DEVICE)
    positions = torch.tensor([0, 5, 63, 17, 17], device=DEVICE)
    q = torch.randn(5, hq, d, generator=g).to(dtype).to(DEVICE)
    kv = torch.randn(5, hk + 1, d, generator=g).to(dtype).to(DEVICE)
    k = kv[:, 1:]  # a strided view, as a split of a fused projection gives
    cos, sin = rot.lookup(positions, dtype)
    want_q, want_k = apply_rotary(q.float(), k.float(), cos.float(), sin.float())
    got_q, got_k = rope.apply_rotary(q, k, cos, sin)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got_q.float(), want_q, **tol)
    torch.testing.assert_close(got_k.float(), want_k, **tol)
    assert got_q.dtype == dtype
