"""Int8 weight-only linear: per-output-channel symmetric int8 weights, bf16 (or
fp32) activations.

Decode at small batch is memory-bound, so reading half the bytes of bf16 is
close to half the time; PyTorch's CPU `_weight_int8pack_mm` does that. At
larger batch the matmul is compute-bound and the int8 kernel has no tensor-core
path, so there we dequantize the weight to the activation dtype (a cheap pass
over N x K) and use the bf16 GEMM (AMX on recent Xeons)."""
from __future__ import annotations

import torch

# Rows at or below this use the int8 kernel; above it, dequantize + GEMM.
INT8_KERNEL_MAX_ROWS = 4


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (int8 [N, K], float32 scales [N])."""
    wf = w.float()
    scale = wf.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.to(dtype) * scale.to(dtype)[:, None])


def int8_linear_ref(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The plain reference: float32 math on the dequantized weight."""
    y = x.float() @ (q.float() * scale[:, None]).T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _has_int8_kernel() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    if x.device.type == "cpu" and rows <= INT8_KERNEL_MAX_ROWS and _has_int8_kernel():
        x2 = x.reshape(rows, x.shape[-1])
        y = torch.ops.aten._weight_int8pack_mm(x2, q, scale.to(x.dtype))
        y = y.reshape(*x.shape[:-1], q.shape[0])
        return y if bias is None else y + bias
    return torch.nn.functional.linear(x, dequantize_int8(q, scale, x.dtype), bias)
