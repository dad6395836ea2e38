"""Plain-torch routed experts: the reference every fused MoE kernel is tested
against, and the CPU path.

Token-sorted dispatch: the T*k (token, expert) assignments are sorted by
expert so each expert sees one contiguous slice of rows and runs two GEMMs on
it. The only Python loop is over experts that received at least one token;
there is never a loop over tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fused_experts(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """x [T, H]; w13 [E, 2I, H] (gate rows then up rows); w2 [E, H, I];
    topk_weights [T, k] (float32), topk_ids [T, k] -> sum_k w * expert(x), [T, H]."""
    t, k = topk_ids.shape
    inter = w2.shape[-1]
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token = order // k  # source token of each sorted row
    counts = torch.bincount(flat, minlength=w13.shape[0]).tolist()  # one host sync per layer
    xs = x[token]
    ys = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        rows = slice(start, start + n)
        gate, up = F.linear(xs[rows], w13[e]).split(inter, dim=-1)
        ys[rows] = F.linear(F.silu(gate) * up, w2[e])
        start += n
    # Gate weights are float32 (routing precision); accumulate there, then cast back.
    ys = ys.float() * topk_weights.reshape(-1)[order, None]
    out = torch.zeros(t, x.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, token, ys)
    return out.to(x.dtype)
