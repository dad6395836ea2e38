"""DeepSeek-V4's MoE routing and expert activation, in plain torch.

- Scores are sqrt(softplus(logits)) (`scoring_func: sqrtsoftplus`).
- Learned layers pick the top-k of score + e_score_correction_bias (the bias
  only chooses, as in V3's noaux_tc; V4 has no expert groups); hash layers
  (the first `num_hash_layers`) take the k experts a frozen token-id table
  `tid2eid` names.
- Gate values are the chosen unbiased scores, renormalized to sum to one
  (+1e-20), times routed_scaling_factor.
- Experts (and the shared expert) use a clamped SwiGLU: the gate clamped
  above at swiglu_limit, the up projection to [-limit, limit].

Ties in the learned top-k break toward the lower expert index (stable sort).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from jevons.kernels.torch_ref.moe_routing import stable_topk


def sqrt_softplus(logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(logits).sqrt()


def _gates(scores: torch.Tensor, ids: torch.Tensor, routed_scaling_factor: float) -> torch.Tensor:
    w = scores.gather(1, ids)
    return w / (w.sum(dim=-1, keepdim=True) + 1e-20) * routed_scaling_factor


def select_experts_v4(
    router_logits: torch.Tensor, top_k: int, correction_bias: torch.Tensor, routed_scaling_factor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (gate values [T, k] float32, expert ids [T, k])."""
    scores = sqrt_softplus(router_logits.float())
    ids = stable_topk(scores + correction_bias.float(), top_k)
    return _gates(scores, ids, routed_scaling_factor), ids


def hash_experts_v4(
    router_logits: torch.Tensor, token_ids: torch.Tensor, tid2eid: torch.Tensor, routed_scaling_factor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A hash layer: the experts come from tid2eid [vocab, k] by token id; the
    gate values from the learned scores, as for a learned layer."""
    scores = sqrt_softplus(router_logits.float())
    ids = tid2eid[token_ids].long()
    return _gates(scores, ids, routed_scaling_factor), ids


def clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float) -> torch.Tensor:
    return F.silu(gate.clamp(max=limit)) * up.clamp(min=-limit, max=limit)
