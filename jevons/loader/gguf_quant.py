"""A GGUF's quantized blocks as levels, scales and zeros on jevons's grid.

Serving a 4-bit GGUF at 4 bits should not round its weights a second time:
dequantizing Q4_1 to bf16 and re-quantizing with a min/max quantizer picks
other levels for some weights, so the model served would be neither the file
nor its dense twin. ggml's 32-element blocks are already the grid of jevons's
qgemm kernel (w = (u - off) * scale + zero per group of 32 along K, half
scales; kernels/cpu/qgemm.py), so they map across as they are:

    Q4_0  w = (q - 8) * d            u = q, scale = d, zero = -8 d   exact
    Q4_1  w = q * d + m              u = q, scale = d, zero = m      exact
    Q8_0  w = q * d  (q signed)      u = q + 128 (8-bit), scale = d  exact
    Q4_K  w = d * sc * q - dmin * mn u = q, scale = d * sc, zero = -dmin * mn
          (sub-blocks of 32; the two products are rounded once to half,
          a relative 2^-11 of a scale, far below bf16's rounding)

Every other type (Q5_*, Q6_K, floats) returns None and is quantized from its
dequantized values as before."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType

from jevons.loader.gguf_dequant import _half, _k_scales, _nibbles

Q = GGMLQuantizationType


@dataclass(frozen=True)
class QuantLevels:
    """One [N, K] weight: w[n, 32 g + i] = (u[n, 32 g + i] - off) * scale[n, g] + zero[n, g]."""

    u: torch.Tensor  # uint8 [N, K]
    scale: torch.Tensor  # float32 [N, K / 32]
    zero: torch.Tensor  # float32 [N, K / 32]
    bits: int  # 4 (off 0) or 8 (off 128)

    def rows(self, index: torch.Tensor) -> "QuantLevels":
        """The same weight with its rows reordered (llama's q/k un-permutation)."""
        return QuantLevels(self.u[index], self.scale[index], self.zero[index], self.bits)

    @staticmethod
    def cat(parts: list["QuantLevels"]) -> "QuantLevels":
        """Stacked along N (fused q/k/v or gate/up projections)."""
        return QuantLevels(torch.cat([p.u for p in parts]), torch.cat([p.scale for p in parts]),
                           torch.cat([p.zero for p in parts]), parts[0].bits)


def _q4_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _half(b, 0)
    return _nibbles(b[:, 2:18]), d, -8 * d


def _q4_1(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _nibbles(b[:, 4:20]), _half(b, 0), _half(b, 2)


def _q8_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = np.ascontiguousarray(b[:, 2:34]).view(np.int8).astype(np.int16) + 128
    d = _half(b, 0)
    return q.astype(np.uint8), d, np.zeros_like(d)


def _q4_k(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """256-element super-blocks as 8 groups of 32 (the layout of gguf_dequant._k_quant)."""
    n = b.shape[0]
    sc, mn = _k_scales(b[:, 4:16])
    scale = (_half(b, 0) * sc).reshape(n * 8, 1)
    zero = (-(_half(b, 2) * mn)).reshape(n * 8, 1)
    runs = b[:, 16:144].reshape(n, 4, 1, 32)
    q = np.concatenate([runs & 0xF, runs >> 4], axis=2).reshape(n * 8, 32)
    return q, scale, zero


# type -> (elements per block, bytes per block, decoder to 32-element groups, bits)
_TYPES = {
    Q.Q4_0: (32, 18, _q4_0, 4),
    Q.Q4_1: (32, 20, _q4_1, 4),
    Q.Q8_0: (32, 34, _q8_0, 8),
    Q.Q4_K: (256, 144, _q4_k, 4),
}


@dataclass(frozen=True)
class StoredBlocks:
    """A tensor's raw ggml blocks, for a packer that reads them directly
    (kernels/cpu/gguf_pack.py): the same weight `levels_from_blocks` reads."""

    raw: np.ndarray  # uint8 [rows, bytes per row], a view into the memory map
    kind: int  # ggml type id
    shape: tuple[int, ...]  # torch order: [N, K], or [E, N, K] for stacked experts
    rows: torch.Tensor | None  # row r of the weight is stored row rows[r] (llama's q/k), or None


def levels_from_blocks(raw: np.ndarray, kind: GGMLQuantizationType, shape: tuple[int, ...]) -> QuantLevels | None:
    """The levels of a 2-D tensor stored as `kind` (torch-order `shape`), or
    None when the type has no exact mapping. Stacked experts [E, N, K] come
    back as [E * N, K] rows (expert e's are rows e * N .. (e + 1) * N)."""
    if len(shape) == 3:
        shape = (shape[0] * shape[1], shape[2])
    if kind not in _TYPES or len(shape) != 2:
        return None
    elems, nbytes, decode, bits = _TYPES[kind]
    n, k = shape
    if k % elems:
        return None
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, nbytes)
    u, scale, zero = decode(blocks)
    return QuantLevels(
        torch.from_numpy(np.ascontiguousarray(u)).reshape(n, k),
        torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32)).reshape(n, k // 32),
        torch.from_numpy(np.ascontiguousarray(zero, dtype=np.float32)).reshape(n, k // 32),
        bits,
    )
