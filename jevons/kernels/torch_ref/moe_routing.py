"""DeepSeekMoE expert selection: which k experts each token goes to, and with what weight.

Two published rules:
- V2: softmax scores; `greedy` top-k, or `group_limited_greedy` (keep the
  `topk_group` groups with the highest single expert score, then top-k inside).
- V3 (`noaux_tc`): sigmoid scores; a learned `e_score_correction_bias` is added
  for choosing experts only (it balances load, it is not a gate value); a
  group's score is the sum of its two best biased scores; keep `topk_group`
  groups, then top-k; weights are the unbiased scores, optionally
  renormalized, times `routed_scaling_factor`.

Ties break toward the lower index (group or expert) so that selection is a
pure function of the scores: torch.topk leaves tie order unspecified.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RouterConfig:
    num_experts: int
    top_k: int
    scoring: str = "softmax"  # "softmax" (V2) | "sigmoid" (V3)
    method: str = "greedy"  # "greedy" | "group_limited_greedy" (V2) | "noaux_tc" (V3)
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0

    @classmethod
    def from_hf(cls, hf: dict, v3: bool) -> "RouterConfig":
        # V3 checkpoints only ever use sigmoid + noaux_tc (DeepSeek's own code
        # rejects anything else), so the architecture decides, not the keys.
        return cls(
            num_experts=int(hf["n_routed_experts"]),
            top_k=int(hf["num_experts_per_tok"]),
            scoring="sigmoid" if v3 else (hf.get("scoring_func") or "softmax"),
            method="noaux_tc" if v3 else (hf.get("topk_method") or "greedy"),
            n_group=int(hf.get("n_group") or 1),
            topk_group=int(hf.get("topk_group") or 1),
            norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
        )


def stable_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest along the last dim; equal values keep index order."""
    return torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k]


def _mask_to_best_groups(choice: torch.Tensor, cfg: RouterConfig) -> torch.Tensor:
    """Set every expert outside the `topk_group` best groups to -inf."""
    t = choice.shape[0]
    grouped = choice.view(t, cfg.n_group, cfg.num_experts // cfg.n_group)
    if cfg.method == "noaux_tc":
        group_score = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)
    else:
        group_score = grouped.max(dim=-1).values
    keep = torch.zeros_like(group_score, dtype=torch.bool)
    keep.scatter_(1, stable_topk(group_score, cfg.topk_group), True)
    return grouped.masked_fill(~keep[..., None], float("-inf")).view(t, cfg.num_experts)


def select_experts(
    router_logits: torch.Tensor, cfg: RouterConfig, correction_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (weights [T, k] float32, expert ids [T, k] int64)."""
    logits = router_logits.float()
    scores = logits.sigmoid() if cfg.scoring == "sigmoid" else logits.softmax(dim=-1)
    choice = scores if correction_bias is None else scores + correction_bias.float()
    if cfg.method in ("group_limited_greedy", "noaux_tc") and cfg.n_group > 1:
        choice = _mask_to_best_groups(choice, cfg)
    ids = stable_topk(choice, cfg.top_k)
    weights = scores.gather(1, ids)  # the bias never reaches the gate value
    if cfg.method == "noaux_tc":
        # V3: renormalize if asked, then always scale.
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        weights = weights * cfg.routed_scaling_factor
    elif cfg.top_k > 1 and cfg.norm_topk_prob:
        # V2 as DeepSeek wrote it: renormalized weights are not scaled.
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    else:
        weights = weights * cfg.routed_scaling_factor
    return weights, ids


def gate_logits(x: torch.Tensor, gate_weight: torch.Tensor) -> torch.Tensor:
    """Router logits [T, E], in float32 as the reference implementations compute them."""
    return F.linear(x.float(), gate_weight.float())


def route_experts(
    x: torch.Tensor, gate_weight: torch.Tensor, cfg: RouterConfig, correction_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate and the selection in one: x [T, H], gate_weight [E, H] ->
    select_experts' (weights, ids). Backends may fuse the two (kernels/cpu/moe_router.py)."""
    return select_experts(gate_logits(x, gate_weight), cfg, correction_bias)
