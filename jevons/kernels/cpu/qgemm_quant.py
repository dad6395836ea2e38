"""A float weight quantized straight into qgemm's blob in C
(csrc/qgemm_quant.c): the bytes Int4Linear and Int8Linear make with torch on
the qgemm path (torch_ref/int4_linear.quantize_int4 / qgemm.quantize_int8_grouped,
then qgemm.pack), which stay the reference (tests/test_qgemm_quant.py), in
one pass over the weight instead of a dozen torch ops over all of it."""
from __future__ import annotations

import ctypes
import functools

import numpy as np
import torch

from jevons.kernels.cpu import qgemm
from jevons.kernels.cpu.build import load
from jevons.kernels.cpu.ffi import I, L, P


@functools.cache
def _fn():
    lib = load()
    if lib is None:
        return None
    fn = lib.jv_qgemm_quantize
    fn.argtypes, fn.restype = [P, I, L, L, L, I, P], ctypes.c_int
    return fn


@functools.cache
def _blocks_fn():
    lib = load()
    if lib is None:
        return None
    fn = lib.jv_qgemm_quantize_blocks
    fn.argtypes, fn.restype = [P, L, I, P, L, L, I, I, P], ctypes.c_int
    return fn


# ggml type id -> (values per block, bytes per block) of the stored types
# quantize_blocks and dequantize_blocks read: F32, F16, BF16, Q4_0, Q4_1,
# Q8_0, Q5_0, Q4_K, Q6_K.
BLOCK_KINDS = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34), 6: (32, 22),
               12: (256, 144), 14: (256, 210)}


@functools.cache
def _dequant_fn():
    lib = load()
    if lib is None:
        return None
    fn = lib.jv_gguf_dequantize
    fn.argtypes, fn.restype = [P, L, I, P, L, L, L, I, P], ctypes.c_int
    return fn


def dequantize_available() -> bool:
    return _dequant_fn() is not None


def dequantize_blocks(raw: np.ndarray, kind: int, out: torch.Tensor, rows: torch.Tensor | None = None) -> bool:
    """Fill `out` ([n, k] float32 or bf16, contiguous, CPU) with the stored
    tensor's dequantization, as the loader's (loader/gguf_dequant.py) cast to
    out's dtype; False (out untouched) where the kind or library is missing.
    rows: int64 ids, row r of out from stored row rows[r] (a lookup; an id
    outside the stored rows is an IndexError), else every stored row."""
    fn = _dequant_fn()
    n, k = out.shape
    if fn is None or kind not in BLOCK_KINDS or out.dtype not in (torch.float32, torch.bfloat16) \
            or out.device.type != "cpu" or not out.is_contiguous() or k % max(BLOCK_KINDS[kind][0], qgemm.GROUP):
        return False
    elems, nbytes = BLOCK_KINDS[kind]
    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    stored = raw.size // ((k // elems) * nbytes)
    if raw.size != stored * (k // elems) * nbytes or (rows is None and stored != n):
        raise ValueError(f"dequantize_blocks: {raw.size} bytes do not hold {n}x{k} of type {kind}")
    if rows is not None:
        rows = rows.to(torch.int64).contiguous()
        if rows.numel() != n:
            raise ValueError(f"dequantize_blocks: {rows.numel()} rows for {n} rows out")
    done = fn(raw.ctypes.data, (k // elems) * nbytes, kind, rows.data_ptr() if rows is not None else None, stored,
              n, k, int(out.dtype == torch.bfloat16), out.data_ptr())
    if done == -2:
        raise IndexError(f"dequantize_blocks: a row id outside 0..{stored - 1}")
    return done == 0


def qgemm_blob(n: int, k: int, bits: int, has_zero: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """The uint8 [n/16, k/32, group bytes] blob an [n, k] weight packs into:
    `out` when given (checked: a contiguous CPU uint8 tensor of that shape,
    e.g. a fused layer's slice of tiles), else a new one."""
    shape = (n // qgemm.TILE, k // qgemm.GROUP, qgemm.group_bytes(bits, has_zero))
    if out is None:
        return torch.empty(shape, dtype=torch.uint8)
    if tuple(out.shape) != shape or out.dtype != torch.uint8 or out.device.type != "cpu" or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous CPU uint8 tensor of shape {shape}")
    return out


def quantize_blocks(raw: np.ndarray, kind: int, n: int, k: int, rows: torch.Tensor | None, dtype: torch.dtype,
                    bits: int, out: torch.Tensor | None = None) -> qgemm.QWeight | None:
    """`quantize` of a stored tensor's dequantization in `dtype` (float32 or
    bf16, as the loader would hand it over), without that float tensor: raw
    uint8 [n, row bytes] blocks of ggml type `kind`, row r from stored row
    rows[r]. None where the kind, the shape or the library is missing.
    out: where the blob goes (`qgemm_blob`; zeros stored at 4 bits only)."""
    fn = _blocks_fn()
    if fn is None or kind not in BLOCK_KINDS or dtype not in (torch.float32, torch.bfloat16) \
            or not qgemm.fits(n, k) or bits not in (4, 8) or k % max(BLOCK_KINDS[kind][0], qgemm.GROUP):
        return None
    elems, nbytes = BLOCK_KINDS[kind]
    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if raw.size != n * (k // elems) * nbytes:
        raise ValueError(f"quantize_blocks: {raw.size} bytes do not hold {n}x{k} of type {kind}")
    idx = None if rows is None else rows.to(torch.int64).contiguous()
    blob = qgemm_blob(n, k, bits, bits == 4, out)
    if fn(raw.ctypes.data, (k // elems) * nbytes, kind, idx.data_ptr() if idx is not None else None, n, k,
          int(dtype == torch.bfloat16), bits, blob.data_ptr()) != 0:
        return None
    return qgemm.QWeight(blob, n, k, bits, bits == 4)


def quantize(w: torch.Tensor, bits: int) -> qgemm.QWeight | None:
    """[N, K] float32 or bf16 CPU weight at `bits` (4: Int4Linear's grid,
    8: Int8Linear's), or None where the C library or the shape is missing."""
    fn = _fn()
    n, k = w.shape
    if fn is None or w.device.type != "cpu" or w.dtype not in (torch.float32, torch.bfloat16) \
            or not qgemm.fits(n, k) or bits not in (4, 8):
        return None
    if w.stride(-1) != 1:
        w = w.contiguous()
    gbytes = qgemm.group_bytes(bits, bits == 4)
    blob = torch.empty(n // qgemm.TILE, k // qgemm.GROUP, gbytes, dtype=torch.uint8)
    if fn(w.data_ptr(), int(w.dtype == torch.bfloat16), w.stride(0), n, k, bits, blob.data_ptr()) != 0:
        return None
    return qgemm.QWeight(blob, n, k, bits, bits == 4)
