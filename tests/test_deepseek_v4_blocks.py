"""DeepSeek-V4's building blocks in kernels/torch_ref against transformers'
DeepseekV4 modules with random weights: the mHC weights (Sinkhorn-normalized
comb), stream collapse / expand and the final hyper head for hc_mult 1, 2 and
4; the sqrtsoftplus top-k router with its selection bias, the hash router, and
the clamped SwiGLU of the shared and routed experts."""
import pytest
import torch

from jevons.kernels.torch_ref.mhc import hc_collapse, hc_expand, hc_head, hc_weights
from jevons.kernels.torch_ref.v4_routing import clamped_swiglu, hash_experts_v4, select_experts_v4

TOL = dict(rtol=1e-5, atol=1e-6)


def config(**kw):
    import transformers

    base = dict(vocab_size=50, hidden_size=24, moe_intermediate_size=12, num_hidden_layers=2, num_attention_heads=2,
                head_dim=16, q_lora_rank=8, n_routed_experts=16, num_experts_per_tok=4, hc_mult=4,
                hc_sinkhorn_iters=20, swiglu_limit=0.7, routed_scaling_factor=1.5)
    base.update(kw)
    return transformers.DeepseekV4Config(**base)


def randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


@pytest.mark.parametrize("hc_mult", [1, 2, 4])
def test_hyper_connection_matches_transformers(hc_mult):
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4HyperConnection, DeepseekV4HyperHead

    cfg = config(hc_mult=hc_mult)
    hc = randomize(DeepseekV4HyperConnection(cfg), hc_mult)
    streams = torch.randn(2, 5, hc_mult, cfg.hidden_size)
    with torch.no_grad():
        post_ref, comb_ref, collapsed_ref = hc(streams)
    flat = streams.reshape(10, hc_mult, -1)
    pre, post, comb = hc_weights(flat, hc.fn, hc.base, hc.scale, cfg.rms_norm_eps, cfg.hc_eps, cfg.hc_sinkhorn_iters)
    torch.testing.assert_close(post, post_ref.reshape(10, hc_mult), **TOL)
    torch.testing.assert_close(comb, comb_ref.reshape(10, hc_mult, hc_mult), **TOL)
    torch.testing.assert_close(hc_collapse(flat, pre), collapsed_ref.reshape(10, -1), **TOL)
    # Sinkhorn ends on a column pass: columns sum to one, rows nearly (20 passes).
    torch.testing.assert_close(comb.sum(-2), torch.ones(10, hc_mult), rtol=0, atol=1e-5)
    torch.testing.assert_close(comb.sum(-1), torch.ones(10, hc_mult), rtol=0, atol=0.1)
    # The decoder layer's mixing: stream k gets post_k * out + sum_j comb[j, k] * stream j.
    out = torch.randn(10, cfg.hidden_size)
    want = post[..., None] * out[:, None] + torch.einsum("tjk,tjd->tkd", comb, flat)
    torch.testing.assert_close(hc_expand(out, flat, post, comb), want, **TOL)

    head = randomize(DeepseekV4HyperHead(cfg), 10 + hc_mult)
    with torch.no_grad():
        ref = head(streams)
    got = hc_head(flat, head.hc_fn, head.hc_base, head.hc_scale, cfg.rms_norm_eps, cfg.hc_eps)
    torch.testing.assert_close(got, ref.reshape(10, -1), **TOL)


def test_sqrtsoftplus_router_matches_transformers():
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4TopKRouter

    cfg = config()
    router = randomize(DeepseekV4TopKRouter(cfg), 1)
    router.e_score_correction_bias.copy_(torch.randn(cfg.n_routed_experts) * 0.3)
    x = torch.randn(40, cfg.hidden_size)
    with torch.no_grad():
        logits, w_ref, ids_ref = router(x)
    w, ids = select_experts_v4(logits, cfg.num_experts_per_tok, router.e_score_correction_bias,
                               cfg.routed_scaling_factor)
    # transformers' top-k is unsorted: compare as sets, gates per expert.
    order_ref, order = ids_ref.sort(-1), ids.sort(-1)
    assert torch.equal(order.values, order_ref.values)
    torch.testing.assert_close(w.gather(1, order.indices), w_ref.gather(1, order_ref.indices), **TOL)
    torch.testing.assert_close(w.sum(-1), torch.full((40,), cfg.routed_scaling_factor), **TOL)


def test_hash_router_matches_transformers():
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4HashRouter

    cfg = config()
    router = randomize(DeepseekV4HashRouter(cfg), 2)
    g = torch.Generator().manual_seed(3)
    router.tid2eid.copy_(torch.stack([torch.randperm(cfg.n_routed_experts, generator=g)[: cfg.num_experts_per_tok]
                                      for _ in range(cfg.vocab_size)]))
    x, tokens = torch.randn(30, cfg.hidden_size), torch.randint(0, cfg.vocab_size, (30,), generator=g)
    with torch.no_grad():
        logits, w_ref, ids_ref = router(x, tokens)
    w, ids = hash_experts_v4(logits, tokens, router.tid2eid, cfg.routed_scaling_factor)
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(w, w_ref, **TOL)


def test_clamped_swiglu_matches_transformers_experts():
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4MLP

    cfg = config()
    mlp = randomize(DeepseekV4MLP(cfg), 4)
    x = torch.randn(20, cfg.hidden_size) * 3  # large enough that the clamps bite
    with torch.no_grad():
        ref = mlp(x)
        got = mlp.down_proj(clamped_swiglu(mlp.gate_proj(x), mlp.up_proj(x), cfg.swiglu_limit))
        assert (mlp.up_proj(x).abs() > cfg.swiglu_limit).any() and (mlp.gate_proj(x) > cfg.swiglu_limit).any()
    torch.testing.assert_close(got, ref, **TOL)
