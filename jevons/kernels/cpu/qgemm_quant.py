"""A float weight quantized straight into qgemm's blob in C
(csrc/qgemm_quant.c): the bytes Int4Linear and Int8Linear make with torch on
the qgemm path (torch_ref/int4_linear.quantize_int4 / qgemm.quantize_int8_grouped,
then qgemm.pack), which stay the reference (tests/test_qgemm_quant.py), in
one pass over the weight instead of a dozen torch ops over all of it."""
from __future__ import annotations

import ctypes
import functools

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
    gbytes = qgemm.TILE * qgemm.GROUP * bits // 8 + 4 * qgemm.TILE
    blob = torch.empty(n // qgemm.TILE, k // qgemm.GROUP, gbytes, dtype=torch.uint8)
    if fn(w.data_ptr(), int(w.dtype == torch.bfloat16), w.stride(0), n, k, bits, blob.data_ptr()) != 0:
        return None
    return qgemm.QWeight(blob, n, k, bits, bits == 4)
