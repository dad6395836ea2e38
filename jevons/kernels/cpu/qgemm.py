"""Group-quantized linear layers on csrc/qgemm.c: 4- or 8-bit weights in
groups of 32 along K, activations quantized to int8 per group, integer dot
products with AVX512-VNNI, or with AVX2 (vpmaddubsw + vpmaddwd) where there
is no AVX-512: the same integers either way.

The weight format is one uint8 tensor (`QWeight.blob`) in the kernel's tile
layout (see the C file's header); `pack` builds it from levels and per-group
scale and zero, `dequantize` inverts it (for batches large enough that the
dense GEMM wins). `qgemm_ref` is the plain-torch reference, activation
rounding included, that the kernel is tested against."""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from jevons.kernels.cpu.build import load
from jevons.kernels.cpu.ffi import I, L, P, kernel

GROUP = 32
TILE = 16
# w = (u - OFFSET) * scale + zero: ggml's grids (Q4_1's q * d + m, Q8_0's
# signed q * d), so a GGUF's blocks repack exactly (loader/gguf_quant.py).
# A symmetric grid stores no zeros (QWeight.has_zero False): 8-bit levels sit
# at 128 either way, 4-bit ones at 8 (ggml's Q4_0: (q - 8) * d). Why: batch-1
# decode is a pass over the blob, and the zeros were 0.5 of Q4_0's 4.5 bits a
# weight (a 10% larger pass for nothing) and 0.5 of Q8_0's 8.5.
OFFSET = {4: 0, 8: 128}
OFFSET_NO_ZERO = {4: 8, 8: 128}
# Scales and zeros are IEEE half, as in ggml's blocks (bf16 would round them).
SCALE_DTYPE = torch.float16
# Where the kernel runs, int4/int8 layers run it at every row count (one model
# on every path, models/layers/linear.py) and keep no dense copy. Measured
# against the dense GEMM on SmolLM2-135M's shapes, ms per pass over 30 layers
# (106M weights cycling through the caches, as in a decode step):
#   AVX512-VNNI, 2 threads, vs the prepacked bf16 GEMM (oneDNN, AMX):
#   rows        1     4     8    12    16    20    24    32    64
#   bf16 GEMM 14.4  14.1  15.3  14.3  14.9  17.0  17.5  19.2  22.3
#   4-bit      4.9   6.7   8.0   9.6  12.0  14.2  17.4  21.0  37.3
#   8-bit      6.1   9.6  10.4  13.6  15.7  17.6  21.0  23.7  38.2
#   (PyTorch's int4 kernel: 5.0 at 1 row, 14.9 at 8, 52 at 32.)
#   AVX2 (Zen 3), 1 thread, CPU ms over 10 layers, vs the fp32 GEMM:
#   rows         1     4     8    16    32   128   512
#   fp32 GEMM  12.7  24.9  26.5  40.5  57.9 130.9 440.4
#   4-bit       3.1   4.3   7.1  18.0  26.1  93.4 357.0
#   8-bit       4.2   6.3  10.0  24.2  33.0 118.9 456.0
# Without a dense copy the alternative would be dequantizing every weight
# (about 1 ns each) and the GEMM: the kernel wins up to a few hundred rows,
# and the one-call decode step (kernels/cpu/llama_decode.py) takes batches up
# to this many rows.
COMPACT_MAX_ROWS = 256
_ARGS = (P, L, P, I, I, P, P, L, L, I, I, I)


# What csrc/qgemm.c's jv_qgemm_simd() returns, by the -march flags it was built with.
PATHS = {0: "scalar", 1: "avx2", 2: "avx512-vnni"}


@functools.cache
def simd_path() -> str | None:
    """The path the built library runs: "avx512-vnni", "avx2" (+FMA, F16C),
    "scalar", or None when there is no library."""
    lib = load()
    if lib is None:
        return None
    fn = lib.jv_qgemm_simd
    fn.restype = ctypes.c_int
    return PATHS[fn()]


@functools.cache
def available() -> bool:
    """True when the library is built with a SIMD path, VNNI or AVX2 (the
    scalar path is only a correctness fallback, slower than PyTorch's kernels)."""
    return simd_path() in ("avx2", "avx512-vnni")


def fits(n: int, k: int) -> bool:
    return n % TILE == 0 and k % GROUP == 0 and n > 0 and k > 0


def level_offset(bits: int, has_zero: bool) -> int:
    return (OFFSET if has_zero else OFFSET_NO_ZERO)[bits]


def group_bytes(bits: int, has_zero: bool) -> int:
    """Bytes of one (tile, group): the levels, 16 half scales, 16 half zeros if stored."""
    return TILE * GROUP * bits // 8 + 2 * TILE * (2 if has_zero else 1)


@dataclass(frozen=True)
class QWeight:
    blob: torch.Tensor  # uint8, [N / 16, K / 32, tile-group bytes]
    n: int
    k: int
    bits: int
    has_zero: bool


def quantize_int8_grouped(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (uint8 levels u = q + 128 [N, K], half scales [N, K / 32]):
    symmetric int8 per group of 32, ggml's Q8_0 grid."""
    n, k = w.shape
    wg = w.float().reshape(n, k // GROUP, GROUP)
    scale = (wg.abs().amax(dim=-1) / 127).to(SCALE_DTYPE)
    s = scale.float().clamp(min=torch.finfo(torch.float32).tiny)[..., None]
    q = torch.round(wg / s).clamp(-127, 127) + 128
    return q.to(torch.uint8).reshape(n, k), scale


def _implied(scale: torch.Tensor, zero: torch.Tensor, bits: int) -> bool:
    """Whether the zeros are what the grid without zeros implies: (u - 0) *
    s + (-8 s) is (u - 8) * s (4-bit), or 0 (8-bit); compared in half, as stored."""
    want = -8 * scale.to(SCALE_DTYPE).float() if bits == 4 else torch.zeros_like(zero, dtype=torch.float32)
    return bool(torch.equal(zero.to(SCALE_DTYPE).float(), want.to(SCALE_DTYPE).float()))


def pack(u: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int,
         keep_zeros: bool = False) -> QWeight:
    """u: uint8 levels [N, K] (w = (u - OFFSET[bits]) * scale + zero, zero
    None: w = (u - OFFSET_NO_ZERO[bits]) * scale); scale, zero: [N, K / 32],
    rounded to half here (exact for ggml's scales). Zeros a symmetric grid
    implies (Q4_0's -8 d, Q8_0's 0) are dropped unless keep_zeros."""
    n, k = u.shape
    if not fits(n, k) or bits not in OFFSET:
        raise ValueError(f"qgemm takes N % 16 == 0, K % 32 == 0 and 4 or 8 bits; got {n}x{k}, {bits}")
    if zero is None and keep_zeros:
        zero = -8 * scale.to(SCALE_DTYPE).float() if bits == 4 else torch.zeros_like(scale)
    elif zero is not None and not keep_zeros and _implied(scale, zero, bits):
        zero = None
    t, g = n // TILE, k // GROUP
    if bits == 8:
        w = u.reshape(t, TILE, g, 8, 4).permute(0, 2, 3, 1, 4)  # [T, G, j, r, b]
    else:
        halves = u.reshape(t, TILE, g, 2, 4, 4)  # k = 32 g + 16 h + 4 j + b
        w = (halves[:, :, :, 0] | (halves[:, :, :, 1] << 4)).permute(0, 2, 3, 1, 4)
    w = w.reshape(t, g, -1)

    def per_tile(v: torch.Tensor) -> torch.Tensor:
        return v.to(SCALE_DTYPE).reshape(t, TILE, g).transpose(1, 2).contiguous().view(torch.uint8)

    parts = (w, per_tile(scale)) + ((per_tile(zero),) if zero is not None else ())
    blob = torch.cat(parts, dim=-1).contiguous()
    return QWeight(blob, n, k, bits, zero is not None)


def with_zeros(qw: QWeight) -> QWeight:
    """The same weights in a blob with zeros (to join blobs along N, which
    must share one group size): 4-bit levels move to offset 0 with zero -8 s."""
    if qw.has_zero:
        return qw
    u, scale, _ = unpack(qw)
    return pack(u, scale, None, qw.bits, keep_zeros=True)


def unpack(qw: QWeight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of pack: (u [N, K] uint8, scale [N, K / 32] half, zero [N, K / 32]
    half; zeros 0 where the blob stores none, the levels then at OFFSET_NO_ZERO)."""
    t, g = qw.n // TILE, qw.k // GROUP
    wbytes = TILE * GROUP * qw.bits // 8
    w = qw.blob[..., :wbytes]
    if qw.bits == 8:
        u = w.reshape(t, g, 8, TILE, 4).permute(0, 3, 1, 2, 4)
    else:
        b = w.reshape(t, g, 4, TILE, 4).permute(0, 3, 1, 2, 4)  # [T, r, G, j, b]
        u = torch.stack((b & 15, b >> 4), dim=3)  # [T, r, G, h, j, b]
    u = u.reshape(qw.n, qw.k)

    def per_row(v: torch.Tensor) -> torch.Tensor:
        return v.contiguous().view(SCALE_DTYPE).reshape(t, g, TILE).transpose(1, 2).reshape(qw.n, g)

    scale = per_row(qw.blob[..., wbytes : wbytes + 2 * TILE])
    zero = per_row(qw.blob[..., wbytes + 2 * TILE :]) if qw.has_zero else torch.zeros_like(scale)
    return u, scale, zero


def dequantize(qw: QWeight, dtype: torch.dtype) -> torch.Tensor:
    """[N, K] weight in `dtype` (computed in fp32, rounded once)."""
    u, scale, zero = unpack(qw)
    levels = (u.float() - level_offset(qw.bits, qw.has_zero)).view(qw.n, qw.k // GROUP, GROUP)
    w = levels * scale.float()[..., None] + zero.float()[..., None]
    return w.reshape(qw.n, qw.k).to(dtype)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] float -> (int8-valued float levels [M, K / 32, 32], d [M, K / 32]),
    rounding as the kernel does: inv = 127 / amax in fp32, q = rint(x * inv)."""
    xg = x.float().reshape(x.shape[0], -1, GROUP)
    amax = xg.abs().amax(dim=-1)
    # A true division, as the C code's 127.f / amax: `127.0 / amax` (a Python
    # scalar over a tensor) is PyTorch's reciprocal(amax) * 127, rounded twice,
    # which moves x * inv across a rounding tie now and then.
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    return torch.round(xg * inv[..., None]), amax / 127.0


def qgemm_ref(x: torch.Tensor, qw: QWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-torch reference, in float64 on the same quantized activations."""
    k = qw.k
    x2 = x.reshape(-1, k)
    xq, d = quantize_activations(x2)
    u, scale, zero = unpack(qw)
    levels = (u.double() - level_offset(qw.bits, qw.has_zero)).view(qw.n, k // GROUP, GROUP)
    dots = torch.einsum("mgi,ngi->mng", xq.double(), levels)  # [M, N, G]
    y = (dots * d.double()[:, None, :] * scale.double()[None]).sum(-1)
    if qw.has_zero:
        y = y + (xq.double().sum(-1) * d.double()) @ zero.double().T
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype).reshape(*x.shape[:-1], qw.n)


def qgemm(x: torch.Tensor, qw: QWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] (fp32 or bf16) @ W^T (+ bias) through the C kernel; the
    reference when the kernel has no variant for x's dtype."""
    fn = kernel("qgemm", x.dtype, _ARGS, ctypes.c_int)
    if fn is None or x.device.type != "cpu" or (bias is not None and bias.dtype != x.dtype):
        return qgemm_ref(x, qw, bias)
    x2 = x.reshape(-1, qw.k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    out = torch.empty(rows, qw.n, dtype=x.dtype)
    b = bias.contiguous() if bias is not None else None
    if fn(x2.data_ptr(), x2.stride(0), qw.blob.data_ptr(), qw.bits, int(qw.has_zero),
          b.data_ptr() if b is not None else None, out.data_ptr(), qw.n, rows, qw.n, qw.k,
          torch.get_num_threads()) != 0:
        raise MemoryError("qgemm: no memory for the quantized activations")
    return out.view(*x.shape[:-1], qw.n)
