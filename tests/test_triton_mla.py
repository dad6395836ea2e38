"""Triton MLA decode (absorbed, heads packed) against the torch reference on
the paged latent cache, under the interpreter on CPU."""
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
from jevons.kernels.torch_ref import mla_attention as ref  # noqa: E402
from jevons.kernels.triton import kv_write, mla_decode as tri  # noqa: E402

DN, DV = 8, 8


def _setup(case, block_size, h, r, dr, dtype=torch.float32, num_blocks=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    cache = torch.zeros(num_blocks, block_size, r + dr, dtype=dtype)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables = [[perm.pop() for _ in range(math.ceil((c + q) / block_size))] for c, q in case]
    width = max(len(t) for t in tables)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    entries = [torch.randn(c + q, r + dr, generator=g).to(dtype) for c, q in case]
    for b, (c, _) in enumerate(case):
        if c:
            prior = AttentionMetadata.build([c], [0], bt[b : b + 1], block_size)
            ref.write_latent(cache, entries[b][:c], prior.slot_mapping)
    meta = AttentionMetadata.build([q for _, q in case], [c for c, _ in case], bt, block_size, DEVICE)
    new = torch.cat([entries[b][c:] for b, (c, _) in enumerate(case)]).to(DEVICE)
    cache = cache.to(DEVICE)
    kv_write.write_latent(cache, new, meta.slot_mapping)
    n = new.shape[0]
    w_kv_b = (torch.randn(h, DN + DV, r, generator=g) / math.sqrt(r)).to(dtype).to(DEVICE)
    q_nope = torch.randn(n, h, DN, generator=g).to(dtype).to(DEVICE)
    q_rope = torch.randn(n, h, dr, generator=g).to(dtype).to(DEVICE)
    return q_nope, q_rope, new, cache, meta, w_kv_b


@pytest.mark.parametrize("case", [
    [(13, 1)],  # batch 1, ragged last block
    [(7, 1), (16, 1), (0, 1), (25, 1)],  # block boundary, empty context
    [(0, 9), (12, 1), (8, 5), (3, 1)],  # mixed with prefill and extend
])
@pytest.mark.parametrize("h", [4, 20])  # one head group; two groups with a ragged one
def test_triton_mla_matches_torch(case, h):
    q_nope, q_rope, new, cache, meta, w = _setup(case, 8, h, r=32, dr=16)
    scale = (DN + 16) ** -0.5
    want = ref.mla_attention(q_nope, q_rope, new, cache, meta, w, scale)
    got = tri.mla_attention(q_nope, q_rope, new, cache, meta, w, scale)
    torch.testing.assert_close(got, want, **F32_TOL)


@pytest.mark.parametrize("splits", [1, 4])
def test_triton_mla_decode_splits_odd_dims(splits):
    """Non-power-of-two latent and rope widths, forced key splits."""
    q_nope, q_rope, new, cache, meta, w = _setup([(45, 1), (3, 1)], 4, 4, r=24, dr=6)
    want = ref.mla_attention(q_nope, q_rope, new, cache, meta, w, 0.3)
    got = tri.mla_decode(q_nope, q_rope, cache, meta, w, 0.3, num_splits=splits)
    torch.testing.assert_close(got, want[meta.decode_tokens], **F32_TOL)


def test_triton_mla_bf16():
    q_nope, q_rope, new, cache, meta, w = _setup([(30, 1), (9, 1)], 8, 4, r=32, dr=16, dtype=torch.bfloat16)
    want = ref.mla_attention(q_nope.float(), q_rope.float(), new.float(), cache.float(), meta, w.float(), 0.2)
    got = tri.mla_attention(q_nope, q_rope, new, cache, meta, w, 0.2)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-2)
