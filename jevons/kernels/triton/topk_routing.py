"""The MoE routing top-k in one kernel: scores, selection bias, group
limiting, top-k with lower-index tie breaks, renormalization and scaling.

Same contract as `kernels.torch_ref.moe_routing.select_experts`: (router_logits
[T, E], cfg, correction_bias) -> (weights [T, k] float32, ids [T, k] int64).
One program per token; the E scores of a token live in registers, groups are
a [groups, E] membership mask (so any group size works, V2's 160/8 included),
and each of the k picks is an argmax that breaks ties toward the lower index,
which is what the reference's stable sort does.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jevons.kernels.triton._common import pow2
from jevons.kernels.torch_ref.moe_routing import RouterConfig


@triton.jit
def _route_kernel(
    logits, bias, w_out, id_out, stride_t, scaling,
    E: tl.constexpr, BLOCK_E: tl.constexpr, K: tl.constexpr, BLOCK_K: tl.constexpr,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr,
    N_GROUP: tl.constexpr, BLOCK_G: tl.constexpr, TOPK_GROUP: tl.constexpr, GROUP_TOP2: tl.constexpr,
    RENORM: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, BLOCK_E)
    em = e < E
    x = tl.load(logits + t * stride_t + e, mask=em, other=float("-inf")).to(tl.float32)
    if SIGMOID:
        scores = tl.sigmoid(x)
    else:
        p = tl.exp(x - tl.max(x, 0))
        scores = p / tl.sum(p, 0)
    scores = tl.where(em, scores, 0.0)
    choice = scores
    if HAS_BIAS:
        choice = choice + tl.load(bias + e, mask=em, other=0.0).to(tl.float32)
    choice = tl.where(em, choice, float("-inf"))

    if N_GROUP > 1:
        gi = tl.arange(0, BLOCK_G)
        member = ((e[None, :] // (E // N_GROUP)) == gi[:, None]) & em[None, :]
        gvals = tl.where(member, choice[None, :], float("-inf"))
        gscore = tl.max(gvals, 1)
        if GROUP_TOP2:
            # V3: a group scores the sum of its two best (biased) experts.
            first = tl.argmax(gvals, 1, tie_break_left=True)
            rest = tl.where(e[None, :] == first[:, None], float("-inf"), gvals)
            gscore = gscore + tl.max(rest, 1)
        gscore = tl.where(gi < N_GROUP, gscore, float("-inf"))
        keep = gi < 0
        for _ in tl.static_range(TOPK_GROUP):
            best = tl.argmax(gscore, 0, tie_break_left=True)
            keep = keep | (gi == best)
            gscore = tl.where(gi == best, float("-inf"), gscore)
        kept = tl.max(tl.where(member & keep[:, None], 1, 0), 0) > 0
        choice = tl.where(kept, choice, float("-inf"))

    slots = tl.arange(0, BLOCK_K)
    ws = tl.zeros([BLOCK_K], tl.float32)
    ids = tl.zeros([BLOCK_K], tl.int64)
    for i in tl.static_range(K):
        pick = tl.argmax(choice, 0, tie_break_left=True)
        w = tl.sum(tl.where(e == pick, scores, 0.0), 0)  # the unbiased score is the gate
        ws = tl.where(slots == i, w, ws)
        ids = tl.where(slots == i, pick.to(tl.int64), ids)
        choice = tl.where(e == pick, float("-inf"), choice)
    if RENORM:
        ws = ws / (tl.sum(ws, 0) + 1e-20)
    ws = ws * scaling
    km = slots < K
    tl.store(w_out + t * K + slots, ws, mask=km)
    tl.store(id_out + t * K + slots, ids, mask=km)


def select_experts(
    router_logits: torch.Tensor, cfg: RouterConfig, correction_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    t, e = router_logits.shape
    k = cfg.top_k
    weights = torch.empty(t, k, dtype=torch.float32, device=router_logits.device)
    ids = torch.empty(t, k, dtype=torch.int64, device=router_logits.device)
    if t == 0:
        return weights, ids
    logits = router_logits if router_logits.stride(-1) == 1 else router_logits.contiguous()
    grouped = cfg.method in ("group_limited_greedy", "noaux_tc") and cfg.n_group > 1
    # The reference's three weight rules, folded into (renormalize?, multiplier).
    if cfg.method == "noaux_tc":
        renorm, scaling = cfg.norm_topk_prob, cfg.routed_scaling_factor
    elif k > 1 and cfg.norm_topk_prob:
        renorm, scaling = True, 1.0
    else:
        renorm, scaling = False, cfg.routed_scaling_factor
    bias = correction_bias if correction_bias is not None else logits  # placeholder pointer when absent
    _route_kernel[(t,)](
        logits, bias, weights, ids, logits.stride(0), float(scaling),
        E=e, BLOCK_E=pow2(e), K=k, BLOCK_K=pow2(k),
        SIGMOID=cfg.scoring == "sigmoid", HAS_BIAS=correction_bias is not None,
        N_GROUP=cfg.n_group if grouped else 1, BLOCK_G=pow2(cfg.n_group if grouped else 1),
        TOPK_GROUP=cfg.topk_group, GROUP_TOP2=cfg.method == "noaux_tc" and e // max(cfg.n_group, 1) >= 2,
        RENORM=renorm,
    )
    return weights, ids
