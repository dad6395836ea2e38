"""A MoE layer's routed experts in one C call (csrc/moe_qgemm.c) on qgemm's
weight format: the (token, expert) pairs sorted by expert, each token's
activations quantized to int8 once, per active expert its gate/up GEMM,
SiLU-and-mul, requantization and down GEMM, and each token's k results summed
with its router weights. Threads share (expert, 16-row tile) work items.

`StackedQWeights` holds every expert's blob of one projection stacked;
`moe_qgemm_ref` is the plain-torch reference (kernels/cpu/qgemm.qgemm_ref per
expert, float32 between the steps) the kernel is tested against."""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jevons.kernels.cpu import qgemm
from jevons.kernels.cpu.build import load
from jevons.kernels.cpu.ffi import I, L, P, kernel

_ARGS = (P, L, L, I, P, P, I, P, I, I, P, I, I, I, I, P, L, I)
PATHS = {0: "scalar", 1: "avx2"}


@functools.cache
def simd_path() -> str | None:
    """"avx2" (+FMA, F16C; also what AVX-512 machines run), "scalar", or None
    when there is no library."""
    lib = load()
    if lib is None:
        return None
    fn = lib.jv_moe_qgemm_simd
    fn.restype = ctypes.c_int
    return PATHS[fn()]


@dataclass(frozen=True)
class StackedQWeights:
    """One projection of E experts: blob uint8 [E, N / 16, K / 32, tile-group
    bytes], each expert's slice qgemm.pack's layout of an [N, K] weight."""

    blob: torch.Tensor
    n: int
    k: int
    bits: int
    has_zero: bool

    @property
    def num_experts(self) -> int:
        return self.blob.shape[0]

    @staticmethod
    def stack(parts: list[qgemm.QWeight]) -> "StackedQWeights":
        first = parts[0]
        if any((p.n, p.k, p.bits) != (first.n, first.k, first.bits) for p in parts):
            raise ValueError("stacked experts must share shape and bits")
        has_zero = any(p.has_zero for p in parts)
        if has_zero:  # one group size for all: each with zeros
            parts = [qgemm.with_zeros(p) for p in parts]
        return StackedQWeights(torch.stack([p.blob for p in parts]), first.n, first.k, first.bits, has_zero)

    def expert(self, e: int) -> qgemm.QWeight:
        return qgemm.QWeight(self.blob[e], self.n, self.k, self.bits, self.has_zero)

    def with_zeros(self) -> "StackedQWeights":
        """The same experts in blobs with zeros (qgemm.with_zeros), to join others that have them."""
        return self if self.has_zero else StackedQWeights.stack(
            [qgemm.with_zeros(self.expert(e)) for e in range(self.num_experts)])

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """[E, N, K]: the exact weights these levels stand for, in `dtype`."""
        return torch.stack([qgemm.dequantize(self.expert(e), dtype) for e in range(self.num_experts)])


def fits(hidden: int, inter: int) -> bool:
    """The kernel's shape rules: K in groups of 32, N in tiles of 16."""
    return qgemm.fits(2 * inter, hidden) and qgemm.fits(hidden, inter)


def moe_qgemm_ref(x: torch.Tensor, w13: StackedQWeights, w2: StackedQWeights,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """Plain torch, the kernel's function: per (token, expert) pair, qgemm_ref
    gate/up on the token's int8 activations, SiLU-and-mul in float32, qgemm_ref
    down on that product's int8 quantization; each token's results summed in
    expert order with float32 router weights. Ids outside [0, E) add nothing."""
    inter = w2.k
    xf = x.float()
    ids = topk_ids.long()
    out = torch.zeros(x.shape[0], w2.n, dtype=torch.float32)
    for e in range(w13.num_experts):
        tok, slot = (ids == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        gate, up = qgemm.qgemm_ref(xf[tok], w13.expert(e)).split(inter, dim=-1)
        y = qgemm.qgemm_ref(F.silu(gate) * up, w2.expert(e))
        out.index_add_(0, tok, y * topk_weights.float()[tok, slot, None])
    return out.to(x.dtype)


def moe_qgemm(x: torch.Tensor, w13: StackedQWeights, w2: StackedQWeights,
              topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """x [T, H] (fp32 or bf16), topk_weights [T, k], topk_ids [T, k] (local
    expert ids) -> [T, H] = sum_k weight * expert(x), through the C kernel
    (the reference where it has no variant)."""
    fn = kernel("moe_qgemm", x.dtype, _ARGS, ctypes.c_int)
    if fn is None or x.device.type != "cpu":
        return moe_qgemm_ref(x, w13, w2, topk_weights, topk_ids)
    if x.stride(-1) != 1:
        x = x.contiguous()
    tokens, topk = topk_ids.shape
    ids = topk_ids.to(torch.int64).contiguous()
    wts = topk_weights.to(torch.float32).contiguous()
    out = torch.empty(tokens, w2.n, dtype=x.dtype)
    if tokens == 0:
        return out
    rc = fn(x.data_ptr(), x.stride(0), tokens, topk, ids.data_ptr(), wts.data_ptr(), w13.num_experts,
            w13.blob.data_ptr(), w13.bits, int(w13.has_zero), w2.blob.data_ptr(), w2.bits, int(w2.has_zero),
            w13.k, w2.k, out.data_ptr(), out.stride(0), torch.get_num_threads())
    if rc != 0:
        raise MemoryError("moe_qgemm: no memory for its scratch")
    return out
