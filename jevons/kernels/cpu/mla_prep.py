"""MLA's glue between its projections and attention on the CPU, one C call a
layer (csrc/mla_prep.c): de-interleave and rotate q_rope, normalize the
latent, rotate the rope key, and write the latent into the paged cache.

Its reference is the torch path it replaces (layers/mla.py's
MLAttention._prep_torch); the C call gives the same bits as that path on the
cpu backend (its rms_norm is the C op, its rotary the torch reference, whose
roundings elementwise.c repeats): tests/test_mla_prep.py. Anything the kernel does not take returns None, and the layer runs
its torch steps."""
from __future__ import annotations

import ctypes
import functools

import torch

from jevons.kernels.cpu.build import load
from jevons.kernels.cpu.ffi import F, I, L, P, kernel

_ARGS = (P, L, L, I, I, I, P, L, I, P, P, P, P, F, I, P, P, P, P, L, I)


@functools.cache
def _limits() -> tuple[int, int]:
    lib = load()
    if lib is None:
        return 0, 0
    a, b = lib.jv_mla_prep_max_rope, lib.jv_mla_prep_max_qrope
    a.restype = b.restype = ctypes.c_int
    return a(), b()


def mla_prep(
    q: torch.Tensor, kv: torch.Tensor, dn: int, r: int, cos: torch.Tensor, sin: torch.Tensor,
    positions: torch.Tensor, norm_weight: torch.Tensor, eps: float, interleave: bool,
    kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """q [N, H, Dn + Dr] (a view of q_proj's rows is fine), kv [N, R + Dr]
    (kv_a_proj_with_mqa's output); cos/sin the rotary tables [max_pos, Dr]
    float32 (rotate-half layout); kv_cache [blocks, block_size, R + Dr].
    Returns (q_rope [N, H, Dr] rotated, latent [N, R + Dr]) with the latent
    already written to its slots, or None where the kernel does not apply."""
    dtype = q.dtype
    fn = kernel("mla_prep", dtype, _ARGS, ctypes.c_int)
    if fn is None:
        return None
    n, h, qk = q.shape
    dr = qk - dn
    max_rope, max_qrope = _limits()
    if (q.device.type != "cpu" or kv.dtype != dtype or kv_cache.dtype != dtype or norm_weight.dtype != dtype
            or q.stride(-1) != 1 or kv.stride(-1) != 1 or kv.dim() != 2 or kv.shape[1] != r + dr
            or kv_cache.shape[-1] != r + dr or not kv_cache.is_contiguous() or not norm_weight.is_contiguous()
            or cos.dtype != torch.float32 or sin.dtype != torch.float32 or cos.shape[-1] != dr
            or not (cos.is_contiguous() and sin.is_contiguous()) or dr > max_rope or h * dr > max_qrope or dr % 2
            or positions.dtype != torch.int64 or slot_mapping.dtype != torch.int64):
        return None
    pos, slots = positions.contiguous(), slot_mapping.contiguous()
    q_rope = torch.empty(n, h, dr, dtype=dtype)
    latent = torch.empty(n, r + dr, dtype=dtype)
    rc = fn(q.data_ptr(), q.stride(0), q.stride(1), h, dn, dr, kv.data_ptr(), kv.stride(0), r,
            cos.data_ptr(), sin.data_ptr(), pos.data_ptr(), norm_weight.data_ptr(), eps, int(interleave),
            q_rope.data_ptr(), latent.data_ptr(), kv_cache.data_ptr(), slots.data_ptr(), n, torch.get_num_threads())
    return (q_rope, latent) if rc == 0 else None
