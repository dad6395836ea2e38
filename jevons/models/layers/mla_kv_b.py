"""MLA's kv_b_proj in 8 bits: int8 rows with one float32 scale each.

MLA's absorbed decode reads all of kv_b_proj's weight every step (W_UK folds
into the query, W_UV into the output): at DeepSeek-V2-Lite's shape [16 heads
x 256 rows, 512] that is 8.4 MB a layer in float32, ~227 MB of the ~1.8 GB
a 27-layer batch-1 token reads, and batch-1 decode is bandwidth-bound.
`quantize_model` (layers/linear.py) leaves kv_b_proj alone because MLA reads
its weight directly rather than calling it; under `-q int8`/`int4` on the CPU
it calls `MLAttention.quantize_owned`, which swaps the nn.Linear for this
module and drops the float weight. The C decode kernel
(kernels/cpu/csrc/sparse_mla.c) reads the int8 rows as they are (2.1 MB a
layer); prefill spans and the torch paths get `dequantized()`, the same
numbers, so prefill and decode stay one function of one weight.

Why one scale per row (of R = kv_lora_rank values) and not one per 32: the
scale folds out of the kernel's sums exactly (W_UK's rows are summed over,
so q_nope[h, d] takes the scale first; W_UV's row is one dot product, scaled
after), so the inner loops are the float path's on a widened row, and the
scales add 16 KB, not 256 KB. The rounding error is at most 1/254 of a
row's largest value: 0.7% relative RMS on V2-Lite-shaped weights (0.5% per
32), 2.6% (0.8%) on heavy-tailed ones with outlier columns, where 4-bit
blocks are 14%; perplexity moves 0.1-0.2% (docs/benchmarks.md, "MLA's kv_b
in 8 bits"; jevons/bench/kv_b_rounding.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jevons.kernels.torch_ref.int8_linear import quantize_int8
from jevons.kernels.torch_ref.sparse_mla import kv_b_weight


class Int8KvB(nn.Module):
    """kv_b_proj as int8 `qweight` [N, R] and float32 `scale` [N]
    (torch_ref/int8_linear.quantize_int8: symmetric, amax / 127 per row)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype  # what dequantized() rounds to by default
        q, s = quantize_int8(weight.detach())
        self.register_buffer("qweight", q)
        self.register_buffer("scale", s)

    def rows(self, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """([heads, Dn + Dv, R] int8, [heads, Dn + Dv] float32): what the
        kernels take as (w_kv_b, w_scale)."""
        return self.qweight.view(heads, -1, self.in_features), self.scale.view(heads, -1)

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight [N, R] these bytes stand for (float32 products,
        rounded once to `dtype`): kv_b_weight's numbers."""
        return kv_b_weight(self.qweight, self.scale, dtype or self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # as the nn.Linear it replaces, should anything call it
        return F.linear(x, self.dequantized(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 rows"


def quantizes_kv_b(method: str, weight: torch.Tensor) -> bool:
    """Whether a model quantized with `method` reads kv_b_proj in 8 bits: on
    the CPU (where the C decode kernel reads int8 rows) for any quantized
    method; `-q none` keeps the float weight as the reference."""
    return method != "none" and weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
