"""Vectorized dequantization of ggml block formats.

gguf.quants is correct but walks 16 rows at a time in Python, which makes a
50k-row embedding take seconds; these kernels treat a whole tensor as one batch
of blocks. They use numpy on purpose: its elementwise ops are single-threaded,
whereas torch's intra-op thread pool stalls badly on a busy 2-core machine
(every small op waits at a barrier for a descheduled thread). Layouts follow
ggml-common.h; each kernel maps `(n_blocks, block_bytes)` uint8 to
`(n_blocks, block_elems)` float32 with ggml's operation order, so results match
the reference bit for bit. Types without a kernel fall back to gguf.quants.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

Q = GGMLQuantizationType
Kernel = Callable[[np.ndarray], np.ndarray]

# Values dequantized per step. Small steps keep temporaries around a megabyte,
# so the allocator reuses them instead of mapping (and page-faulting) fresh
# memory for every operation on a large tensor.
_VALUES_PER_STEP = 1 << 18


def _half(b: np.ndarray, offset: int) -> np.ndarray:
    """The fp16 scalar at byte `offset` of each block, as float32 of shape (n, 1)."""
    return np.ascontiguousarray(b[:, offset : offset + 2]).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """32-element blocks pack element j in the low nibble of byte j, element
    j + 16 in its high nibble."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=1)


def _high_bits_32(qh_bytes: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: bit j of a little-endian uint32 is element j's fifth bit."""
    word = np.ascontiguousarray(qh_bytes).view("<u4")  # (n, 1)
    return ((word >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def _q4_0(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 2:18]).astype(np.int8) - np.int8(8)
    return q.astype(np.float32) * _half(b, 0)


def _q4_1(b: np.ndarray) -> np.ndarray:
    return _nibbles(b[:, 4:20]).astype(np.float32) * _half(b, 0) + _half(b, 2)


def _q5_0(b: np.ndarray) -> np.ndarray:
    q = (_nibbles(b[:, 6:22]) | (_high_bits_32(b[:, 2:6]) << 4)).astype(np.int8) - np.int8(16)
    return q.astype(np.float32) * _half(b, 0)


def _q5_1(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 8:24]) | (_high_bits_32(b[:, 4:8]) << 4)
    return q.astype(np.float32) * _half(b, 0) + _half(b, 2)


def _q8_0(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b[:, 2:34]).view(np.int8).astype(np.float32) * _half(b, 0)


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K pack eight 6-bit scales and eight 6-bit mins in 12 bytes: the
    first four of each in bytes 0-7 (low 6 bits), the last four split between
    bytes 8-11 (low bits) and the top 2 bits of bytes 0-7."""
    lo, mid, top = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scale = np.concatenate([lo & 63, (top & 0xF) | ((lo >> 6) << 4)], axis=1)
    minimum = np.concatenate([mid & 63, (top >> 4) | ((mid >> 6) << 4)], axis=1)
    return scale.astype(np.float32), minimum.astype(np.float32)


def _k_quant(b: np.ndarray, ql: np.ndarray, high: np.ndarray | None) -> np.ndarray:
    """Shared Q4_K/Q5_K body: 8 sub-blocks of 32, value = d*scale*q - dmin*min.
    Each 32-byte run of `ql` holds sub-block 2c in low nibbles, 2c+1 in high."""
    n = b.shape[0]
    scale, minimum = _k_scales(b[:, 4:16])
    d = (_half(b, 0) * scale)[:, :, None]  # (n, 8, 1)
    m = (_half(b, 2) * minimum)[:, :, None]
    runs = ql.reshape(n, 4, 1, 32)
    q = np.concatenate([runs & 0xF, runs >> 4], axis=2).reshape(n, 8, 32)
    if high is not None:
        q = q | (high << 4)
    return (d * q.astype(np.float32) - m).reshape(n, 256)


def _q4_k(b: np.ndarray) -> np.ndarray:
    return _k_quant(b, b[:, 16:144], None)


def _q5_k(b: np.ndarray) -> np.ndarray:
    # 32 bytes of high bits: bit s of byte l is the fifth bit of sub-block s, element l.
    qh = b[:, 16:48].reshape(-1, 1, 32)
    high = (qh >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    return _k_quant(b, b[:, 48:176], high)


def _q6_k(b: np.ndarray) -> np.ndarray:
    """Two halves of 128; in each, 64 bytes of low nibbles (two 32-byte runs,
    low then high nibbles) and 32 bytes carrying 2 high bits for 4 groups of 32.
    One int8 scale per 16 elements, one fp16 super-scale at the end."""
    n = b.shape[0]
    ql = b[:, 0:128].reshape(n, 2, 2, 32)
    qh = b[:, 128:192].reshape(n, 2, 1, 32)
    low = np.concatenate([ql & 0xF, ql >> 4], axis=2)  # (n, 2, 4, 32): groups 0..3 of each half
    high = (qh >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
    q = ((low | (high << 4)).astype(np.int8) - np.int8(32)).reshape(n, 16, 16)
    scale = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)  # (n, 16)
    d = (_half(b, 208) * scale)[:, :, None]
    return (d * q.astype(np.float32)).reshape(n, 256)


def _q2_k(b: np.ndarray) -> np.ndarray:
    """16 groups of 16, each with a 4-bit scale (low nibble) and 4-bit min (high
    nibble) in bytes 0-15; 2-bit levels in bytes 16-79, where byte l of 32-byte
    run h holds groups (h, shift 0..6) in its four bit pairs; fp16 d, dmin last."""
    n = b.shape[0]
    sc = b[:, 0:16]
    dl = (_half(b, 80) * (sc & 0xF).astype(np.float32))[:, :, None]
    ml = (_half(b, 82) * (sc >> 4).astype(np.float32))[:, :, None]
    q = (b[:, 16:80].reshape(n, 2, 1, 32) >> _SHIFTS_2BIT) & 3  # (n, 2 runs, 4 shifts, 32)
    return (dl * q.reshape(n, 16, 16).astype(np.float32) - ml).reshape(n, 256)


def _q3_k(b: np.ndarray) -> np.ndarray:
    """32 bytes of high-bit masks (bit j of byte l: group pair j, element l; a set
    bit means no -4 offset), 64 bytes of 2-bit levels laid out as Q2_K's, 16
    signed 6-bit scales packed in 12 bytes (low nibbles in bytes 0-7, high bit
    pairs in bytes 8-11), one fp16 d."""
    n = b.shape[0]
    s = b[:, 96:108]
    low = (s[:, 0:8].reshape(n, 1, 8) >> _SHIFTS_NIBBLE) & 0xF  # (n, 2, 8) -> scales 0-7, 8-15
    high = (s[:, 8:12].reshape(n, 1, 4) >> _SHIFTS_2BIT.reshape(1, 4, 1)) & 3  # (n, 4, 4)
    scale = ((low.reshape(n, 16) | (high.reshape(n, 16) << 4)).astype(np.int8) - np.int8(32)).astype(np.float32)
    dl = (_half(b, 108) * scale)[:, :, None]
    ql = ((b[:, 32:96].reshape(n, 2, 1, 32) >> _SHIFTS_2BIT) & 3).reshape(n, 16, 16)
    mask = b[:, 0:32].reshape(n, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)
    qh = ((mask & 1) ^ 1).reshape(n, 16, 16)
    q = ql.astype(np.int8) - (qh << 2).astype(np.int8)
    return (dl * q.astype(np.float32)).reshape(n, 256)


# IQ4_NL's 16 non-uniform levels (ggml-common.h kvalues_iq4nl).
_IQ4_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)


def _iq4_nl(b: np.ndarray) -> np.ndarray:
    """Q4_0's layout with a lookup table instead of q - 8 (llama-quantize's
    fallback for Q2_K/Q3_K rows whose length is not a multiple of 256)."""
    return _IQ4_LEVELS[_nibbles(b[:, 2:18])].astype(np.float32) * _half(b, 0)


_SHIFTS_2BIT = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
_SHIFTS_NIBBLE = np.array([0, 4], dtype=np.uint8).reshape(1, 2, 1)


# type -> (elements per block, bytes per block, kernel)
_KERNELS: dict[GGMLQuantizationType, tuple[int, int, Kernel]] = {
    Q.Q4_0: (32, 18, _q4_0),
    Q.Q4_1: (32, 20, _q4_1),
    Q.Q5_0: (32, 22, _q5_0),
    Q.Q5_1: (32, 24, _q5_1),
    Q.Q8_0: (32, 34, _q8_0),
    Q.Q4_K: (256, 144, _q4_k),
    Q.Q5_K: (256, 176, _q5_k),
    Q.Q6_K: (256, 210, _q6_k),
    Q.Q2_K: (256, 84, _q2_k),
    Q.Q3_K: (256, 110, _q3_k),
    Q.IQ4_NL: (32, 18, _iq4_nl),
}

KERNEL_TYPES: frozenset[GGMLQuantizationType] = frozenset(_KERNELS)


def dequantize(raw: np.ndarray, kind: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    """Raw block bytes (any shape, e.g. a read-only memmap) -> float32 tensor of `shape`."""
    if kind not in _KERNELS:
        # gguf.quants raises NotImplementedError for types it cannot read.
        values = gguf_dequantize(raw, kind)
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)
    elems, nbytes, kernel = _KERNELS[kind]
    flat = raw.reshape(-1)
    n_blocks = flat.shape[0] // nbytes
    if n_blocks * nbytes != flat.shape[0]:
        raise ValueError(f"{kind.name} data of {flat.shape[0]} bytes is not whole {nbytes}-byte blocks")
    out = np.empty((n_blocks, elems), dtype=np.float32)
    step = max(1, _VALUES_PER_STEP // elems)

    def run(start: int) -> None:
        stop = min(start + step, n_blocks)
        # Reading a slice of the memory map pages in only this step's bytes.
        blocks = np.asarray(flat[start * nbytes : stop * nbytes]).reshape(stop - start, nbytes)
        out[start:stop] = kernel(blocks)

    starts = range(0, n_blocks, step)
    if len(starts) == 1:
        run(0)
    else:
        # numpy drops the GIL inside each elementwise op, so steps on a few
        # threads overlap (every step writes its own rows of `out`).
        list(_pool().map(run, starts))
    return torch.from_numpy(out).reshape(shape)


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="gguf-dequant")
