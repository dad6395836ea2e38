"""The torch MLA backend against naive per-sequence attention with fully
expanded per-head K/V, on random mixed batches; both algebraic forms; and the
rope layout and softmax scale against transformers' DeepSeek code."""
import math

import pytest
import torch

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.kernels.torch_ref.mla_attention import mla_attention, write_latent
from jevons.models.layers.mla import deinterleave, softmax_scale
from jevons.models.layers.rotary import RotaryEmbedding

H, DN, DR, DV, R = 4, 8, 6, 5, 12


def dense(q_nope, q_rope, entries, w_kv_b, scale):
    """q_*: [Q, H, *] are the last Q positions of a sequence whose cache
    entries are [L, R + Dr]; expand K and V per head and attend causally."""
    c, k_rope = entries[:, :R], entries[:, R:]
    kv = torch.einsum("lr,hcr->lhc", c, w_kv_b)
    k = torch.cat([kv[..., :DN], k_rope[:, None].expand(-1, H, -1)], dim=-1)
    v = kv[..., DN:]
    q = torch.cat([q_nope, q_rope], dim=-1)
    L, Q = entries.shape[0], q.shape[0]
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    s = s.masked_fill(torch.arange(L)[None, :] > torch.arange(L - Q, L)[:, None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v)


@pytest.mark.parametrize("forms", [("absorbed", "expanded"), ("absorbed", "absorbed"), ("expanded", "expanded")])
@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("case", [
    [(0, 7)],  # one prefill
    [(5, 1), (17, 1), (0, 1)],  # decodes, one with no context at all
    [(0, 9), (12, 1), (16, 5), (3, 1), (31, 33)],  # mixed: prefill, decode, chunks over a prefix
])
def test_mla_matches_dense(forms, block_size, case):
    torch.manual_seed(0)
    num_blocks = 64
    cache = torch.zeros(num_blocks, block_size, R + DR)
    w_kv_b = torch.randn(H, DN + DV, R) / math.sqrt(R)
    perm = torch.randperm(num_blocks).tolist()
    tables = [[perm.pop() for _ in range(math.ceil((c + q) / block_size))] for c, q in case]
    width = max(len(t) for t in tables)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    entries = [torch.randn(c + q, R + DR) for c, q in case]
    for b, (c, _) in enumerate(case):
        if c:
            prior = AttentionMetadata.build([c], [0], bt[b : b + 1], block_size)
            write_latent(cache, entries[b][:c], prior.slot_mapping)
    meta = AttentionMetadata.build([q for _, q in case], [c for c, _ in case], bt, block_size)
    new = torch.cat([entries[b][c:] for b, (c, _) in enumerate(case)])
    write_latent(cache, new, meta.slot_mapping)
    n = new.shape[0]
    q_nope, q_rope = torch.randn(n, H, DN), torch.randn(n, H, DR)
    scale = (DN + DR) ** -0.5
    out = mla_attention(q_nope, q_rope, new, cache, meta, w_kv_b, scale, *forms)
    starts = meta.query_start_loc.tolist()
    ref = torch.cat([
        dense(q_nope[starts[b] : starts[b + 1]], q_rope[starts[b] : starts[b + 1]], entries[b], w_kv_b, scale)
        for b in range(len(case))
    ])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_cache_holds_only_latent_and_rope_key():
    """What a step writes is exactly the [latent | rope key] rows, at their slots."""
    cache = torch.zeros(8, 4, R + DR)
    meta = AttentionMetadata.build([6], [0], torch.tensor([[5, 2]]), 4)
    rows = torch.randn(6, R + DR)
    write_latent(cache, rows, meta.slot_mapping)
    torch.testing.assert_close(torch.cat([cache[5], cache[2, :2]]), rows)
    assert cache.shape[-1] == R + DR


def test_interleaved_rope_matches_transformers():
    """De-interleave + rotate-half equals V3's interleaved rotation exactly,
    and gives V2's complex-number rotation up to a fixed permutation (so
    every q.k dot product is the same)."""
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import apply_rotary_emb
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import apply_rotary_pos_emb_interleave

    torch.manual_seed(0)
    dim, n = 16, 11
    rot = RotaryEmbedding(dim, 64, 10000.0, None)
    pos = torch.randint(0, 64, (n,))
    q, k = torch.randn(n, 3, dim), torch.randn(n, 1, dim)
    ours_q, ours_k = rot(pos, deinterleave(q), deinterleave(k))

    cos, sin = rot.cos[pos][None], rot.sin[pos][None]  # [1, n, dim], cat(freqs, freqs) layout
    v3_q, v3_k = apply_rotary_pos_emb_interleave(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    torch.testing.assert_close(ours_q, v3_q[0].transpose(0, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_k, v3_k[0].transpose(0, 1), rtol=0, atol=1e-6)

    inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2).float() / dim))
    freqs = torch.polar(torch.ones(n, dim // 2), pos[:, None].float() * inv)[None]
    v2_q, v2_k = apply_rotary_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], freqs)
    v2_q, v2_k = v2_q[0].transpose(0, 1), v2_k[0].transpose(0, 1)
    torch.testing.assert_close(deinterleave(v2_q), ours_q, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        torch.einsum("nhd,nkd->nhk", ours_q, ours_k), torch.einsum("nhd,nkd->nhk", v2_q, v2_k), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("scaling", [
    None,
    {"rope_type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096},
    {"type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096},
    {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 128},  # no mscale_all_dim: no correction
])
def test_softmax_scale_matches_transformers(scaling):
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    params = dict(scaling or {"rope_type": "default"})
    params.setdefault("rope_type", params.get("type"))
    assert softmax_scale(192, scaling) == pytest.approx(yarn_apply_mscale(params, 192**-0.5), rel=1e-12)
    if scaling and scaling.get("factor") == 40 and scaling["mscale_all_dim"] == 1.0:
        # DeepSeek-V3's published numbers: (0.1 ln 40 + 1)^2 / sqrt(192)
        assert softmax_scale(192, scaling) == pytest.approx((0.1 * math.log(40) + 1) ** 2 / math.sqrt(192))
