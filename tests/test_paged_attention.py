"""The torch paged-attention backend against dense causal attention computed
naively per sequence, on random mixed batches."""
import math

import pytest
import torch

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.kernels.torch_ref.paged_attention import paged_attention, write_kv


def dense(q, k, v, scale):
    """q: [Q, H, D] are the last Q positions of a sequence with keys k, v: [L, Hkv, D]."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, 1)
    v = v.repeat_interleave(groups, 1)
    L, Q = k.shape[0], q.shape[0]
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    qpos = torch.arange(L - Q, L)[:, None]
    s = s.masked_fill(torch.arange(L)[None, :] > qpos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v)


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("case", [
    [(0, 7)],  # one prefill
    [(5, 1), (17, 1), (1, 1)],  # decodes
    [(0, 9), (12, 1), (16, 5), (3, 1), (31, 33)],  # mixed: prefill, decode, chunk over prefix
])
def test_paged_attention_matches_dense(block_size, case):
    torch.manual_seed(0)
    H, Hkv, D = 4, 2, 8
    num_blocks = 64
    kc = torch.zeros(num_blocks, block_size, Hkv, D)
    vc = torch.zeros_like(kc)
    perm = torch.randperm(num_blocks).tolist()  # scattered, non-contiguous blocks
    tables, full_k, full_v = [], [], []
    for ctx, q in case:
        n_blocks = math.ceil((ctx + q) / block_size)
        tables.append([perm.pop() for _ in range(n_blocks)])
        full_k.append(torch.randn(ctx + q, Hkv, D))
        full_v.append(torch.randn(ctx + q, Hkv, D))
    width = max(len(t) for t in tables)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    # Prior context goes into the cache first.
    for b, (ctx, q) in enumerate(case):
        if ctx:
            m = AttentionMetadata.build([ctx], [0], bt[b : b + 1], block_size)
            write_kv(kc, vc, full_k[b][:ctx], full_v[b][:ctx], m.slot_mapping)
    meta = AttentionMetadata.build([q for _, q in case], [c for c, _ in case], bt, block_size)
    qs = [torch.randn(q, H, D) for _, q in case]
    k_new = torch.cat([full_k[b][c:] for b, (c, _) in enumerate(case)])
    v_new = torch.cat([full_v[b][c:] for b, (c, _) in enumerate(case)])
    write_kv(kc, vc, k_new, v_new, meta.slot_mapping)
    out = paged_attention(torch.cat(qs), k_new, v_new, kc, vc, meta, D**-0.5)
    ref = torch.cat([dense(qs[b], full_k[b], full_v[b], D**-0.5) for b in range(len(case))])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
