"""DeepSeekMoE expert selection against hand-computed cases (groups, ties, the
V3 bias used only for choosing) and against transformers' own routers."""
import math

import pytest
import torch

from jevons.kernels.torch_ref.moe_routing import RouterConfig, select_experts

V3 = RouterConfig(num_experts=8, top_k=2, scoring="sigmoid", method="noaux_tc", n_group=4, topk_group=2,
                  norm_topk_prob=True, routed_scaling_factor=2.5)


def logit(p):
    """Router logits whose sigmoid is exactly (to float32) the given scores."""
    p = torch.tensor(p, dtype=torch.float64)
    return (p / (1 - p)).log().float()[None]


def route(logits, cfg, bias=None):
    w, ids = select_experts(logits, cfg, None if bias is None else torch.tensor(bias))
    return w[0].tolist(), ids[0].tolist()


def test_v3_group_score_is_top2_sum_and_groups_limit_choice():
    # groups (2 experts each): g0 = .9+.1 = 1.0, g1 = .6+.55 = 1.15, g2 = .8+.7 = 1.5, g3 = .5
    # Keep g2, g1. Expert 0 has the single best score but its group loses.
    w, ids = route(logit([0.9, 0.1, 0.6, 0.55, 0.8, 0.7, 0.2, 0.3]), V3)
    assert ids == [4, 5]
    assert w == pytest.approx([0.8 / 1.5 * 2.5, 0.7 / 1.5 * 2.5], rel=1e-5)


def test_v3_bias_chooses_but_does_not_weigh():
    # bias +0.3 on expert 3 lifts its choice score to 0.85 (groups unchanged:
    # g1 = 1.45 < g2 = 1.5): chosen are 3 and 4, but expert 3's gate value is
    # its unbiased 0.55.
    bias = [0, 0, 0, 0.3, 0, 0, 0, 0]
    w, ids = route(logit([0.9, 0.1, 0.6, 0.55, 0.8, 0.7, 0.2, 0.3]), V3, bias)
    assert ids == [3, 4]
    assert w == pytest.approx([0.55 / 1.35 * 2.5, 0.8 / 1.35 * 2.5], rel=1e-5)


def test_v3_bias_can_move_a_whole_group():
    # bias +0.9 on expert 7 makes g3 = 0.2 + 1.2 = 1.4 > g1 = 1.15: g2 and g3 are kept.
    bias = [0, 0, 0, 0, 0, 0, 0, 0.9]
    w, ids = route(logit([0.9, 0.1, 0.6, 0.55, 0.8, 0.7, 0.2, 0.3]), V3, bias)
    assert ids == [7, 4]  # biased 1.2 beats 0.8
    assert w == pytest.approx([0.3 / 1.1 * 2.5, 0.8 / 1.1 * 2.5], rel=1e-5)


def test_v3_without_renormalization_scales_raw_scores():
    cfg = RouterConfig(**{**V3.__dict__, "norm_topk_prob": False})
    w, ids = route(logit([0.9, 0.1, 0.6, 0.55, 0.8, 0.7, 0.2, 0.3]), cfg)
    assert ids == [4, 5] and w == pytest.approx([0.8 * 2.5, 0.7 * 2.5], rel=1e-5)


def test_ties_break_toward_lower_index():
    # All scores equal: groups 0 and 1 win, then experts 0 and 1.
    w, ids = route(torch.zeros(1, 8), V3)
    assert ids == [0, 1] and w == pytest.approx([1.25, 1.25])
    # A tie inside the winning group set: experts 2 and 5 both 0.7, expert 4 is 0.8.
    w, ids = route(logit([0.1, 0.1, 0.7, 0.3, 0.8, 0.7, 0.1, 0.1]), V3)
    assert ids == [4, 2]
    # Tied groups: g1 and g2 hold the same two scores, g0 is best; the lower
    # group (g1) wins, so expert 5 (0.7, in g2) is out.
    cfg = RouterConfig(**{**V3.__dict__, "top_k": 3})
    w, ids = route(logit([0.6, 0.5, 0.7, 0.3, 0.3, 0.7, 0.1, 0.1]), cfg)
    assert ids == [2, 0, 1]


def test_v2_greedy_softmax_is_scaled_not_renormalized():
    cfg = RouterConfig(num_experts=4, top_k=2, routed_scaling_factor=1.5)
    w, ids = route(torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log(), cfg)
    assert ids == [0, 1] and w == pytest.approx([0.6, 0.45], rel=1e-6)


def test_v2_norm_topk_prob_renormalizes_without_scaling():
    # DeepSeek-V2's own code: normalized gates skip routed_scaling_factor.
    cfg = RouterConfig(num_experts=4, top_k=2, routed_scaling_factor=1.5, norm_topk_prob=True)
    w, ids = route(torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log(), cfg)
    assert ids == [0, 1] and w == pytest.approx([4 / 7, 3 / 7], rel=1e-6)


def test_v2_group_limited_greedy_ranks_groups_by_best_expert():
    # groups of 2: g0 = {.30, .00}, g1 = {.25, .25}: by max g0 wins (a sum would pick g1).
    p = [0.30, 0.0001, 0.25, 0.25, 0.1, 0.0999, 0.0, 0.0]
    cfg = RouterConfig(num_experts=8, top_k=2, method="group_limited_greedy", n_group=4, topk_group=1)
    w, ids = route(torch.tensor([p]).clamp_min(1e-9).log(), cfg)
    assert ids == [0, 1]
    assert w == pytest.approx([p[0] / sum(p), p[1] / sum(p)], rel=1e-4)


def _hf_router(version, cfg: RouterConfig, weight, bias=None):
    import transformers

    common = dict(hidden_size=weight.shape[1], n_routed_experts=cfg.num_experts, num_experts_per_tok=cfg.top_k,
                  n_group=cfg.n_group, topk_group=cfg.topk_group, norm_topk_prob=cfg.norm_topk_prob,
                  routed_scaling_factor=cfg.routed_scaling_factor)
    if version == "v3":
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

        router = DeepseekV3TopkRouter(transformers.DeepseekV3Config(**common))
        router.e_score_correction_bias.copy_(bias)
    else:
        from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter

        router = DeepseekV2TopkRouter(transformers.DeepseekV2Config(**common, topk_method=cfg.method))
    router.weight.data.copy_(weight)
    return router


@pytest.mark.parametrize("version,cfg", [
    ("v3", RouterConfig(16, 4, "sigmoid", "noaux_tc", 4, 2, True, 2.5)),
    ("v3", RouterConfig(16, 3, "sigmoid", "noaux_tc", 1, 1, False, 1.0)),
    ("v2", RouterConfig(16, 3, "softmax", "greedy", 1, 1, False, 1.0)),
    ("v2", RouterConfig(16, 4, "softmax", "group_limited_greedy", 8, 3, False, 16.0)),
])
def test_matches_transformers_routers(version, cfg):
    torch.manual_seed(0)
    x, weight = torch.randn(64, 32), torch.randn(cfg.num_experts, 32)
    bias = torch.randn(cfg.num_experts) * 0.1 if version == "v3" else None
    _, ref_w, ref_ids = _hf_router(version, cfg, weight, bias)(x)
    w, ids = select_experts(x @ weight.T, cfg, bias)
    order, ref_order = ids.argsort(-1), ref_ids.argsort(-1)
    assert torch.equal(ids.gather(1, order), ref_ids.gather(1, ref_order))
    torch.testing.assert_close(w.gather(1, order), ref_w.gather(1, ref_order), rtol=1e-5, atol=1e-6)


def test_from_hf_reads_both_generations():
    v3 = RouterConfig.from_hf({"n_routed_experts": 256, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
                               "norm_topk_prob": True, "routed_scaling_factor": 2.5}, v3=True)
    assert (v3.scoring, v3.method, v3.n_group, v3.topk_group) == ("sigmoid", "noaux_tc", 8, 4)
    v2 = RouterConfig.from_hf({"n_routed_experts": 64, "num_experts_per_tok": 6, "n_group": None,
                               "topk_group": None, "topk_method": "greedy"}, v3=False)
    assert (v2.scoring, v2.method, v2.n_group, v2.routed_scaling_factor) == ("softmax", "greedy", 1, 1.0)
    assert math.isclose(v3.routed_scaling_factor, 2.5)
