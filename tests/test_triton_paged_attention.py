"""Triton paged attention and cache writes against the torch reference, under
the interpreter on CPU (TRITON_INTERPRET=1). Shapes stay tiny: every program
instance runs as Python there."""
from __future__ import annotations

import math
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

from jevons.kernels.attention_metadata import AttentionMetadata  # noqa: E402
from jevons.kernels.torch_ref import mla_attention as mla_ref  # noqa: E402
from jevons.kernels.torch_ref import paged_attention as ref  # noqa: E402
from jevons.kernels.triton import kv_write, paged_attention as tri  # noqa: E402


def _setup(case, block_size, hkv, d, dtype, num_blocks=160, seed=0):
    """A cache with each request's prior context written, and this step's batch."""
    g = torch.Generator().manual_seed(seed)
    kc = torch.zeros(num_blocks, block_size, hkv, d, dtype=dtype)
    vc = torch.zeros_like(kc)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables, ks, vs = [], [], []
    for ctx, q in case:
        tables.append([perm.pop() for _ in range(math.ceil((ctx + q) / block_size))])
        ks.append(torch.randn(ctx + q, hkv, d, generator=g).to(dtype))
        vs.append(torch.randn(ctx + q, hkv, d, generator=g).to(dtype))
    width = max(len(t) for t in tables)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    for b, (ctx, _) in enumerate(case):
        if ctx:
            m = AttentionMetadata.build([ctx], [0], bt[b : b + 1], block_size)
            ref.write_kv(kc, vc, ks[b][:ctx], vs[b][:ctx], m.slot_mapping)
    meta = AttentionMetadata.build([q for _, q in case], [c for c, _ in case], bt, block_size, DEVICE)
    k_new = torch.cat([ks[b][c:] for b, (c, _) in enumerate(case)])
    v_new = torch.cat([vs[b][c:] for b, (c, _) in enumerate(case)])
    return kc.to(DEVICE), vc.to(DEVICE), k_new.to(DEVICE), v_new.to(DEVICE), meta, g


CASES = {
    "decode_b1": [(37, 1)],
    "decode_batch": [(5, 1), (16, 1), (0, 1), (33, 1)],  # block boundary, empty context
    "prefill": [(0, 19)],
    "extend": [(16, 7), (9, 18)],  # chunk over a cached prefix, at and across a boundary
    "mixed": [(0, 9), (12, 1), (16, 5), (3, 1), (31, 20)],
    "decode_large": [((7 * i) % 41, 1) for i in range(24)],
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("hq,hkv", [(4, 2), (3, 3)])
def test_triton_paged_attention_matches_torch(name, hq, hkv):
    d = 16
    kc, vc, k, v, meta, g = _setup(CASES[name], 8, hkv, d, torch.float32)
    kc2, vc2 = kc.clone(), vc.clone()
    ref.write_kv(kc, vc, k, v, meta.slot_mapping)
    kv_write.write_kv(kc2, vc2, k, v, meta.slot_mapping)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)
    q = torch.randn(k.shape[0], hq, d, generator=g).to(DEVICE)
    want = ref.paged_attention(q, k, v, kc, vc, meta, d**-0.5)
    got = tri.paged_attention(q, k, v, kc, vc, meta, d**-0.5)
    torch.testing.assert_close(got, want, **F32_TOL)


@pytest.mark.parametrize("splits", [1, 3])
def test_triton_decode_splits_merge(splits):
    """Split-KV decode: forced split counts, uneven contexts, one empty split."""
    kc, vc, k, v, meta, g = _setup([(40, 1), (2, 1), (23, 1)], 4, 2, 32, torch.float32)
    ref.write_kv(kc, vc, k, v, meta.slot_mapping)
    q = torch.randn(3, 8, 32, generator=g).to(DEVICE)
    want = ref.paged_attention(q, k, v, kc, vc, meta, 0.2)
    got = tri.paged_attention(q, k, v, kc, vc, meta, 0.2, num_splits=splits)
    torch.testing.assert_close(got, want, **F32_TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_paged_attention_half(dtype):
    kc, vc, k, v, meta, g = _setup([(0, 11), (21, 1), (7, 5)], 8, 2, 16, dtype)
    ref.write_kv(kc, vc, k, v, meta.slot_mapping)
    q = torch.randn(k.shape[0], 4, 16, generator=g).to(dtype).to(DEVICE)
    want = ref.paged_attention(q.float(), k.float(), v.float(), kc.float(), vc.float(), meta, 0.25)
    got = tri.paged_attention(q, k, v, kc, vc, meta, 0.25)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


def test_triton_kv_write_strided_and_padding():
    """Non-contiguous K (a view of a fused qkv) and negative padding slots."""
    kc = torch.zeros(4, 4, 2, 8, device=DEVICE)
    vc = torch.zeros_like(kc)
    qkv = torch.randn(5, 3, 2, 8, device=DEVICE)
    k, v = qkv[:, 1], qkv[:, 2]
    slots = torch.tensor([3, 0, -1, 15, 6], device=DEVICE)
    kv_write.write_kv(kc, vc, k, v, slots)
    flat_k, flat_v = kc.view(-1, 2, 8), vc.view(-1, 2, 8)
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            assert torch.equal(flat_k[s], k[i]) and torch.equal(flat_v[s], v[i])
    assert int((flat_k.abs().sum((1, 2)) != 0).sum()) == 4  # the padded row wrote nothing


def test_triton_write_latent_casts():
    cache = torch.zeros(3, 4, 24, dtype=torch.bfloat16, device=DEVICE)
    lat = torch.randn(6, 24, device=DEVICE)
    slots = torch.tensor([0, 5, 11, 2, 7, 9], device=DEVICE)
    kv_write.write_latent(cache, lat, slots)
    want = torch.zeros_like(cache)
    mla_ref.write_latent(want, lat, slots)
    # The interpreter truncates fp32 -> bf16 where a GPU rounds to nearest: one ulp.
    torch.testing.assert_close(cache.float(), want.float(), rtol=2**-7, atol=0)
