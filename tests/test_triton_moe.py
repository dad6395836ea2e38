"""Triton fused MoE (token-sorted grouped GEMM, SiLU-and-multiply fused) and
routing top-k against the torch references, under the interpreter on CPU."""
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
# fp32 dots run as TF32 on a GPU.
F32_TOL = dict(rtol=1e-4, atol=1e-4) if DEVICE.type == "cpu" else dict(rtol=1e-2, atol=1e-2)

from jevons.kernels.torch_ref.moe import fused_experts as ref_experts  # noqa: E402
from jevons.kernels.triton import fused_moe, topk_routing  # noqa: E402
from jevons.kernels.torch_ref.moe_routing import RouterConfig, select_experts  # noqa: E402


def _weights(e, h, i, g, dtype=torch.float32):
    w13 = (torch.randn(e, 2 * i, h, generator=g) / h**0.5).to(dtype)
    w2 = (torch.randn(e, h, i, generator=g) / i**0.5).to(dtype)
    return w13.to(DEVICE), w2.to(DEVICE)


@pytest.mark.parametrize("t,k,e,h,i", [
    (1, 2, 4, 32, 16),  # decode: one token
    (7, 3, 5, 24, 20),  # odd sizes: ragged K and N tiles, experts left empty
    (21, 2, 4, 16, 32),  # an expert with more rows than one M tile
    (64, 6, 16, 32, 16),  # a larger batch, DeepSeek-like k = 6 of 16 experts
])
def test_triton_fused_experts_matches_torch(t, k, e, h, i):
    g = torch.Generator().manual_seed(t)
    w13, w2 = _weights(e, h, i, g)
    x = torch.randn(t, h, generator=g).to(DEVICE)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).to(DEVICE)
    w = torch.rand(t, k, generator=g).to(DEVICE)
    torch.testing.assert_close(fused_moe.fused_experts(x, w13, w2, w, ids), ref_experts(x, w13, w2, w, ids),
                               **F32_TOL)


def test_triton_fused_experts_bf16_and_k1():
    g = torch.Generator().manual_seed(1)
    w13, w2 = _weights(3, 32, 16, g, torch.bfloat16)
    x = torch.randn(5, 32, generator=g).to(torch.bfloat16).to(DEVICE)
    ids = torch.randint(0, 3, (5, 1), generator=g).to(DEVICE)
    w = torch.rand(5, 1, generator=g).to(DEVICE)
    got = fused_moe.fused_experts(x, w13, w2, w, ids)
    want = ref_experts(x.float(), w13.float(), w2.float(), w, ids)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-2)


def test_triton_moe_align_layout():
    ids = torch.tensor([[2, 0], [2, 1], [2, 0]], device=DEVICE)
    sorted_ids, tiles = fused_moe.moe_align(ids, num_experts=4, block_m=4)
    tk = ids.numel()
    real = tiles[tiles >= 0].tolist()
    assert real == [0, 1, 2]  # one tile per used expert, in expert order
    flat = ids.flatten()
    for tile, expert in enumerate(real):
        rows = [r for r in sorted_ids[tile * 4 : tile * 4 + 4].tolist() if r < tk]
        assert rows and all(int(flat[r]) == expert for r in rows)
    assert sorted(r for r in sorted_ids.tolist() if r < tk) == list(range(tk))


ROUTERS = [
    RouterConfig(num_experts=16, top_k=4),  # V2-Lite style greedy softmax
    RouterConfig(num_experts=16, top_k=3, norm_topk_prob=True),
    RouterConfig(num_experts=20, top_k=3, method="group_limited_greedy", n_group=4, topk_group=2,
                 routed_scaling_factor=16.0),  # V2: group size 5, not a power of two
    RouterConfig(num_experts=32, top_k=4, scoring="sigmoid", method="noaux_tc", n_group=8, topk_group=3,
                 norm_topk_prob=True, routed_scaling_factor=2.5),  # V3
]


@pytest.mark.parametrize("cfg", ROUTERS, ids=lambda c: f"{c.method}-{c.num_experts}")
def test_triton_routing_matches_torch(cfg):
    g = torch.Generator().manual_seed(cfg.num_experts)
    logits = torch.randn(9, cfg.num_experts, generator=g).to(DEVICE)
    bias = (torch.randn(cfg.num_experts, generator=g) * 0.1).to(DEVICE) if cfg.method == "noaux_tc" else None
    w_ref, i_ref = select_experts(logits, cfg, bias)
    w, i = topk_routing.select_experts(logits, cfg, bias)
    assert torch.equal(i, i_ref)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)


def test_triton_routing_ties_prefer_lower_index():
    cfg = RouterConfig(num_experts=8, top_k=3)
    logits = torch.tensor([[0.0, 2.0, 1.0, 2.0, 1.0, 2.0, 0.0, 1.0], [1.0] * 8], device=DEVICE)
    w_ref, i_ref = select_experts(logits, cfg)
    w, i = topk_routing.select_experts(logits, cfg)
    assert i.tolist() == i_ref.tolist() == [[1, 3, 5], [0, 1, 2]]
    torch.testing.assert_close(w, w_ref)
