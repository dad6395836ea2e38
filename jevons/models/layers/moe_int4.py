"""Routed experts at 4 bits for the CPU: every expert's w13 and w2 quantized
to int4 in groups of 32 along K (kernels/torch_ref/int4_linear.py's grid, a
quarter of bf16's bytes), run grouped by expert: the (token, expert) rows are
sorted by expert once, and each expert that received rows runs one int4
gate/up GEMM, SiLU-and-mul and one int4 down GEMM on its contiguous slice.

A MoE decode step touches only the routed experts' weights, so the bytes per
expert are the cost on a CPU; this is the format a fused grouped kernel (one
call for all experts) takes over. `dequantized()` is the exact float weight
the reference (kernels/torch_ref/moe.fused_experts) runs to check it."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from jevons.kernels.torch_ref.int4_linear import (
    INT4_GROUP_SIZE,
    dequantize_int4,
    int4_linear,
    pack_int4,
    quantize_int4,
    unpack_int4,
)


def _quantize_stack(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, N, K] float -> (packed [E, ...] uint8, scales_zeros [E, K/32, N, 2])."""
    packed, sz = [], []
    for e in range(w.shape[0]):
        q, s = quantize_int4(w[e].float(), INT4_GROUP_SIZE)
        packed.append(pack_int4(q))
        sz.append(s)
    return torch.stack(packed), torch.stack(sz)


class Int4Experts(nn.Module):
    """Stacked experts (models/layers/moe.StackedExperts) at 4 bits."""

    def __init__(self, w13: torch.Tensor, w2: torch.Tensor) -> None:
        super().__init__()
        self.num_experts, two_inter, self.hidden = w13.shape
        self.inter = two_inter // 2
        if self.hidden % INT4_GROUP_SIZE or self.inter % INT4_GROUP_SIZE:
            raise ValueError(f"int4 experts need hidden {self.hidden} and inter {self.inter} in groups of 32")
        w13_q, w13_sz = _quantize_stack(w13)
        w2_q, w2_sz = _quantize_stack(w2)
        self.register_buffer("w13_q", w13_q)
        self.register_buffer("w13_sz", w13_sz)
        self.register_buffer("w2_q", w2_q)
        self.register_buffer("w2_sz", w2_sz)
        self._dense: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def _weight(self, which: str, e: int, dtype: torch.dtype) -> torch.Tensor:
        packed, sz = getattr(self, f"{which}_q")[e], getattr(self, f"{which}_sz")[e]
        k = self.hidden if which == "w13" else self.inter
        return dequantize_int4(unpack_int4(packed, k), sz, INT4_GROUP_SIZE, dtype)

    def dequantized(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(w13, w2) as the exact float weights these levels stand for; made
        once per dtype and kept (the dense route below runs on these very
        tensors, so the reference given them computes the same bits: a GEMM's
        result can depend on its operands' alignment)."""
        if dtype not in self._dense:
            self._dense[dtype] = (
                torch.stack([self._weight("w13", e, dtype) for e in range(self.num_experts)]),
                torch.stack([self._weight("w2", e, dtype) for e in range(self.num_experts)]),
            )
        return self._dense[dtype]

    def _expert(self, e: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(rows: torch.Tensor) -> torch.Tensor:
            if rows.dtype != torch.bfloat16:
                # PyTorch's int4 kernel rounds activations to bf16: other
                # dtypes run on the exact dequantization, as Int4Linear does.
                w13, w2 = self.dequantized(rows.dtype)
                gate, up = F.linear(rows, w13[e]).split(self.inter, dim=-1)
                return F.linear(F.silu(gate) * up, w2[e])
            gate, up = int4_linear(rows, self.w13_q[e], self.w13_sz[e], INT4_GROUP_SIZE, None).split(self.inter, dim=-1)
            return int4_linear(F.silu(gate) * up, self.w2_q[e], self.w2_sz[e], INT4_GROUP_SIZE, None)

        return run

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        return grouped_by_expert(x, topk_weights, topk_ids, self.num_experts, self._expert)


def grouped_by_expert(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    num_experts: int,
    expert: Callable[[int], Callable[[torch.Tensor], torch.Tensor]],
) -> torch.Tensor:
    """Token-sorted dispatch, in the reference's order of operations (sort by
    expert, one call per expert with rows, float32 gate weights, index_add),
    so an expert function equal to the reference's gives equal bits."""
    t, k = topk_ids.shape
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token = order // k
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    xs = x[token]
    ys = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts):
        if n:
            ys[start : start + n] = expert(e)(xs[start : start + n])
            start += n
    ys = ys.float() * topk_weights.reshape(-1)[order, None]
    out = torch.zeros(t, x.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, token, ys)
    return out.to(x.dtype)
