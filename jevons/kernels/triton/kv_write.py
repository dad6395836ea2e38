"""Writing this step's K/V (or MLA latent) into the paged cache.

One program per new token copies that token's whole row (all KV heads x
head_dim, or the R + Dr latent) to its slot. A negative slot means "padding"
(a CUDA-graph batch padded up to its bucket) and is skipped, so padded rows
never touch a real block.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jevons.kernels.triton._common import pow2


@triton.jit
def _write_rows(
    src, dst, slots,
    stride_src_n, stride_src_h,
    H: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr,
):
    n = tl.program_id(0)
    slot = tl.load(slots + n)
    if slot >= 0:
        offs = tl.arange(0, BLOCK)
        h = offs // D
        d = offs % D
        mask = offs < H * D
        val = tl.load(src + n * stride_src_n + h * stride_src_h + d, mask=mask)
        # The cache row is contiguous [H, D]; cast explicitly (the cache may be
        # narrower than the activations, e.g. fp8).
        tl.store(dst + slot.to(tl.int64) * (H * D) + offs, val.to(dst.dtype.element_ty), mask=mask)


def _write(cache: torch.Tensor, x: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """cache [..., *row] contiguous; x [N, H, D] or [N, D] with a unit last stride."""
    if x.shape[0] == 0:
        return
    if x.dim() == 2:
        x = x.unsqueeze(1)
    assert cache.is_contiguous(), "the paged cache must be contiguous"
    if x.stride(-1) != 1:
        x = x.contiguous()
    n, h, d = x.shape
    _write_rows[(n,)](
        x, cache, slot_mapping, x.stride(0), x.stride(1), H=h, D=d, BLOCK=pow2(h * d)
    )


def write_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Same contract as torch_ref.paged_attention.write_kv: k, v [N, Hkv, D]."""
    _write(k_cache, k, slot_mapping)
    _write(v_cache, v, slot_mapping)


def write_latent(kv_cache: torch.Tensor, latent: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Same contract as torch_ref.mla_attention.write_latent: latent [N, R + Dr]."""
    _write(kv_cache, latent, slot_mapping)
