"""DeepSeek-V4's manifold-constrained hyper-connections (mHC), in plain torch.

The residual stream is N = hc_mult parallel streams per token, [T, N, D].
Around each attention and each MLP block, one small projection of the
(RMS-normalized, flattened) streams gives three mixing weights:
- pre  [T, N]:    sigmoid(.) + eps, collapses the streams into the block input,
- post [T, N]:    2 * sigmoid(.), spreads the block output back over the streams,
- comb [T, N, N]: softmax(.) + eps, then Sinkhorn-Knopp iterations towards a
  doubly-stochastic matrix, mixes the input streams into the output streams.
New streams = post * block_out + comb^T @ streams (comb is applied transposed:
stream k receives sum_j comb[j, k] * stream j). The model's final hidden
state is one more collapse (hc_head) with its own sigmoid weights.

Everything here runs in float32, as DeepSeek and transformers do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _unweighted_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps).to(x.dtype)


def sinkhorn(comb: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """Alternately normalize columns and rows of [..., N, N]: a column pass,
    then (iters - 1) row + column passes (DeepSeek's order)."""
    comb = comb / (comb.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(dim=-1, keepdim=True) + eps)
        comb = comb / (comb.sum(dim=-2, keepdim=True) + eps)
    return comb


def hc_weights(
    streams: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor,
    norm_eps: float, hc_eps: float, iters: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """streams [T, N, D]; fn [(2 + N) N, N D], base [(2 + N) N], scale [3] ->
    (pre [T, N], post [T, N], comb [T, N, N]), float32."""
    t, n, _ = streams.shape
    mixes = F.linear(_unweighted_rms_norm(streams.reshape(t, -1).float(), norm_eps), fn.float())
    pre_w, post_w, comb_w = mixes.split([n, n, n * n], dim=-1)
    pre_b, post_b, comb_b = base.float().split([n, n, n * n])
    s_pre, s_post, s_comb = scale.float().unbind(0)
    pre = torch.sigmoid(pre_w * s_pre + pre_b) + hc_eps
    post = 2 * torch.sigmoid(post_w * s_post + post_b)
    comb = torch.softmax(comb_w.view(t, n, n) * s_comb + comb_b.view(n, n), dim=-1) + hc_eps
    return pre, post, sinkhorn(comb, iters, hc_eps)


def hc_collapse(streams: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """[T, N, D] weighted by pre [T, N] -> the block input [T, D]."""
    return (pre.unsqueeze(-1) * streams).sum(dim=1).to(streams.dtype)


def hc_expand(block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """The streams after a block: post * out + comb^T @ streams, [T, N, D]."""
    dt = streams.dtype
    return post.to(dt).unsqueeze(-1) * block_out.unsqueeze(-2) + torch.matmul(comb.to(dt).transpose(-1, -2), streams)


def hc_head(
    streams: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, norm_eps: float, hc_eps: float
) -> torch.Tensor:
    """The final collapse of [T, N, D] to [T, D]: fn [N, N D], base [N], scale [1]."""
    t = streams.shape[0]
    mixes = F.linear(_unweighted_rms_norm(streams.reshape(t, -1).float(), norm_eps), fn.float())
    pre = torch.sigmoid(mixes * scale.float() + base.float()) + hc_eps
    return hc_collapse(streams, pre)
