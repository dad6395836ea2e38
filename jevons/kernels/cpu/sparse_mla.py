"""Absorbed MLA decode over selected latent entries on the CPU
(csrc/sparse_mla.c): DeepSeek-V3.2's sparse decode, and its dense fallback.

Same signature and result as kernels.torch_ref.sparse_mla.sparse_mla_decode,
which the tests hold it to; shapes or dtypes the C kernel does not take go to
that reference. kv_b_proj's weight comes in the activations' dtype or as int8
rows with float32 row scales (`w_scale`: models/layers/mla_kv_b.py), which
the kernel reads as they are."""
from __future__ import annotations

import ctypes

import torch

from jevons.kernels.cpu.build import load
from jevons.kernels.cpu.ffi import F, I, L, P, kernel
from jevons.kernels.torch_ref import sparse_mla as ref

_ARGTYPES = (P, P, P, P, L, P, L, P, P, P, P, I, I, I, I, I, I, I, F, I)


def simd_path() -> str | None:
    """"avx2" or "scalar" (the compiler's loops), or None without the library."""
    lib = load()
    if lib is None:
        return None
    fn = lib.jv_sparse_mla_simd
    fn.restype = ctypes.c_int
    return ("scalar", "avx2")[fn()]


def _kernel(dtype: torch.dtype):
    return kernel("sparse_mla_decode", dtype, _ARGTYPES, ctypes.c_int)


def _int64(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int64 and t.is_contiguous() else t.to(torch.int64).contiguous()


def sparse_mla_decode(
    q_nope: torch.Tensor, q_rope: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
    positions: torch.Tensor | None, lens: torch.Tensor, w_kv_b: torch.Tensor, scale: float,
    w_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """q_nope [B, H, Dn], q_rope [B, H, Dr]; kv_cache [blocks, block_size,
    R + Dr]; block_tables [B, W] (row b: decode row b's table); positions
    [B, k] (row b attends to its first lens[b] entries) or None (to positions
    0 .. lens[b] - 1); w_kv_b [H, Dn + Dv, R] in q's dtype, or int8 with
    w_scale [H, Dn + Dv] float32 (row scales). Returns [B, H, Dv]."""
    dtype = q_nope.dtype
    fn = _kernel(dtype)
    if w_scale is None:
        w_ok = w_kv_b.dtype == dtype
    else:
        w_ok = w_kv_b.dtype == torch.int8 and w_scale.dtype == torch.float32
    if (fn is None or q_nope.device.type != "cpu" or {q_rope.dtype, kv_cache.dtype} != {dtype} or not w_ok
            or not kv_cache.is_contiguous()):
        return ref.sparse_mla_decode(q_nope, q_rope, kv_cache, block_tables, positions, lens, w_kv_b, scale, w_scale)
    b, h, dn = q_nope.shape
    dr, r = q_rope.shape[-1], w_kv_b.shape[-1]
    dv = w_kv_b.shape[1] - dn
    q_nope, q_rope, w_kv_b = q_nope.contiguous(), q_rope.contiguous(), w_kv_b.contiguous()
    if w_scale is not None:
        w_scale = w_scale.contiguous()
    tables, lens = _int64(block_tables), _int64(lens)
    pos = _int64(positions) if positions is not None else None
    out = q_nope.new_empty(b, h, dv)
    rc = fn(
        q_nope.data_ptr(), q_rope.data_ptr(), kv_cache.data_ptr(), tables.data_ptr(), tables.stride(0),
        pos.data_ptr() if pos is not None else None, pos.stride(0) if pos is not None else 0, lens.data_ptr(),
        w_kv_b.data_ptr(), w_scale.data_ptr() if w_scale is not None else None, out.data_ptr(), b, h, dn, dr, r,
        dv, kv_cache.shape[1], scale, torch.get_num_threads(),
    )
    if rc != 0:
        raise MemoryError("sparse MLA decode could not allocate its scratch buffers")
    return out
