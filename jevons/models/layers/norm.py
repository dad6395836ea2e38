from __future__ import annotations

import torch
from torch import nn

from jevons.kernels.registry import ops_for


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (as the reference implementations do) and cast
    back, so bf16 runs don't drift from the checkpoint's training numerics."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = ops_for(x.device)
        if ops.backend != "torch":
            return ops.rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual): one fused pass on the Triton backend."""
        ops = ops_for(x.device)
        if ops.backend != "torch":
            return ops.fused_add_rms_norm(x, residual, self.weight, self.eps)
        s = x + residual
        return self(s), s
