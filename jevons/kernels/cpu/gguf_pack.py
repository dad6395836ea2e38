"""ggml's Q4_0/Q4_1/Q8_0/Q4_K blocks straight into a qgemm weight blob, in C
(csrc/gguf_pack.c): the bytes `qgemm.pack` makes from the levels
loader/gguf_quant.py reads out of the same blocks, which stay the reference
(tests/test_gguf_pack.py), at memory speed instead of through numpy and torch."""
from __future__ import annotations

import ctypes
import functools

import numpy as np
import torch

from jevons.kernels.cpu import qgemm
from jevons.kernels.cpu.build import load
from jevons.kernels.cpu.ffi import I, L, P
from jevons.kernels.cpu.qgemm_quant import qgemm_blob

# ggml type id -> (values per block, bytes per block, bits of the levels)
KINDS = {2: (32, 18, 4), 3: (32, 20, 4), 8: (32, 34, 8), 12: (256, 144, 4)}  # Q4_0, Q4_1, Q8_0, Q4_K


@functools.cache
def _fn():
    lib = load()
    if lib is None:
        return None
    fn = lib.jv_gguf_pack
    fn.argtypes, fn.restype = [P, L, I, P, L, L, P], ctypes.c_int
    return fn


def available() -> bool:
    return _fn() is not None


def fits(kind: int, n: int, k: int) -> bool:
    return kind in KINDS and n % qgemm.TILE == 0 and k % KINDS[kind][0] == 0


def has_zero(kind: int) -> bool:
    """Whether the blob of this kind stores zeros: Q4_1 and Q4_K; Q4_0's and
    Q8_0's grids are symmetric."""
    return kind in (3, 12)


def pack_blocks(raw: np.ndarray, kind: int, n: int, k: int, rows: torch.Tensor | None = None,
                out: torch.Tensor | None = None) -> qgemm.QWeight:
    """raw: uint8 [n, row bytes] (a view into a memory-mapped file is fine),
    row r of the result from raw row rows[r]; the kernel must be `available`
    and the shape must `fit`. out: where the blob goes (qgemm_quant.qgemm_blob:
    a fused layer's parts fill slices of one blob, no copy after)."""
    fn = _fn()
    if fn is None or not fits(kind, n, k):
        raise ValueError(f"gguf_pack: no kernel, or ggml type {kind} does not pack as {n}x{k}")
    elems, nbytes, bits = KINDS[kind]
    raw = np.ascontiguousarray(raw).reshape(-1)
    if raw.size != n * (k // elems) * nbytes:
        raise ValueError(f"gguf_pack: {raw.size} bytes do not hold {n}x{k} of type {kind}")
    idx = None if rows is None else rows.to(torch.int64).contiguous()
    if idx is not None and (idx.numel() != n or int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError("gguf_pack: rows must index the tensor's own rows")
    zero = has_zero(kind)
    blob = qgemm_blob(n, k, bits, zero, out)
    fn(raw.ctypes.data, (k // elems) * nbytes, kind, idx.data_ptr() if idx is not None else None, n, k,
       blob.data_ptr())
    return qgemm.QWeight(blob, n, k, bits, zero)
