"""Block-scaled FP8 dequantization, the reference for kernels/triton/fp8_gemm.py
and the torch fp8_linear (the checkpoint side is models/layers/fp8.py)."""
from __future__ import annotations

import torch

DEFAULT_BLOCK = (128, 128)


def dequant_block_fp8(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = DEFAULT_BLOCK
) -> torch.Tensor:
    """FP8 [..., N, K] times its per-block scale [..., ceil(N/bn), ceil(K/bk)] -> float32.

    Edge blocks may be partial (N or K not a multiple of the block): the
    expanded scale grid is cropped to the weight's shape."""
    bn, bk = block
    n, k = weight.shape[-2:]
    want = (-(-n // bn), -(-k // bk))
    if tuple(scale_inv.shape[-2:]) != want:
        raise ValueError(
            f"scale shape {tuple(scale_inv.shape)} does not tile weight {tuple(weight.shape)} in {block} blocks"
        )
    s = scale_inv.float().repeat_interleave(bn, dim=-2).repeat_interleave(bk, dim=-1)
    return weight.float() * s[..., :n, :k]
