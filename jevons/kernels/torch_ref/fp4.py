"""Packed FP4 (e2m1) weights with power-of-two group scales, as DeepSeek-V4
ships its routed experts (`expert_dtype: fp4`): the reference dequantization.

A weight [N, K] is stored as [N, K / 2] bytes, two e2m1 codes per byte (the
low nibble is the even column), with one e8m0 scale per row and group of
`K / scale.shape[-1]` columns (32 in the checkpoints). Codes are sign (bit 3)
and a magnitude from {0, 0.5, 1, 1.5, 2, 3, 4, 6}.
"""
from __future__ import annotations

import torch

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """[..., K / 2] bytes (int8, uint8 or float4_e2m1fn_x2) -> float32 [..., K]."""
    u8 = packed.contiguous().view(torch.uint8)
    lut = torch.tensor(E2M1, dtype=torch.float32, device=packed.device)
    pairs = torch.stack([lut[(u8 & 0xF).long()], lut[(u8 >> 4).long()]], dim=-1)
    return pairs.reshape(*packed.shape[:-1], 2 * packed.shape[-1])


def dequant_fp4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Packed [..., N, K / 2] and group scales [..., N, G] (G divides K) -> float32 [..., N, K]."""
    w = unpack_fp4(packed)
    k, groups = w.shape[-1], scale.shape[-1]
    if k % groups or scale.shape[-2] != w.shape[-2]:
        raise ValueError(f"FP4 scale {tuple(scale.shape)} does not tile weight {tuple(w.shape)} by rows and groups")
    return w * scale.float().repeat_interleave(k // groups, dim=-1)
