"""Plain-torch references of the elementwise ops (RMSNorm, add + RMSNorm,
SiLU-and-mul) and of the FP8 linear: what the kernel registry runs on the
"torch" backend and what the CPU and Triton kernels are checked against."""
from __future__ import annotations

import torch

from jevons.kernels.torch_ref.fp8 import dequant_block_fp8


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The exact arithmetic of models.layers.norm.RMSNorm.forward."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def torch_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    s = x + residual
    return torch_rms_norm(s, weight, eps), s


def torch_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def torch_fp8_linear(
    x: torch.Tensor, w_q: torch.Tensor, w_scale_inv: torch.Tensor,
    block: tuple[int, int] = (128, 128), bias: torch.Tensor | None = None,
) -> torch.Tensor:
    return torch.nn.functional.linear(x, dequant_block_fp8(w_q, w_scale_inv, block).to(x.dtype), bias)
