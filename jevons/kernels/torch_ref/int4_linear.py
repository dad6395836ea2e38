"""Int4 weight-only linear: asymmetric group-wise 4-bit weights, bf16 (or
fp32) activations.

Format. A [N, K] weight is cut into groups of `group_size` consecutive
values along K (the input dimension); each group keeps its min and max and 16
evenly spaced levels between them. The kernel's convention, read from
PyTorch's aten/src/ATen/native/cpu/int4mm_kernel.cpp (its lookup table maps a
nibble q in 0..15 to q - 8, then one fma with the group's scale and zero):

    w = (q - 8) * scale + zero          q in 0..15, per group (scale, zero)

so a min/max group is scale = (max - min) / 15, zero = min + 8 * scale
(up to the rounding of scale and zero to bf16; see quantize_int4).
`scales_zeros` is [K // group_size, N, 2] (scale, zero), bf16, which is what
the kernel reads; the levels are placed on the bf16-rounded scale and zero so
the grid we round to is the grid the kernel computes. ggml's Q4_1 (group 32,
w = d * q + m) is the same grid with d = scale, m = zero - 8 * scale, so a
Q4_1 checkpoint dequantized at load is re-quantized almost exactly.

Kernel. PyTorch's CPU `_weight_int4pack_mm_for_cpu(x [M, K], packed,
group_size, scales_zeros)` with `packed` from
`_convert_weight_to_int4pack_for_cpu(q int32 [N, K], 1)`: a quarter of the
bytes of bf16, and decode at small batch is memory-bound. It needs N a
multiple of 16, a group of 32, 64, 128 or 256, and K divisible by the group.
It accepts float32 activations (with float32 scales_zeros) too, but on x86
only its bf16 instantiation is vectorized: the float32 one is the scalar
fallback, about 20x slower than bf16 (0.59 vs 0.029 ms for 960x576 at one
row), slower than the dense fp32 matmul. So fp32 activations are rounded to
bf16 for the kernel and the result is cast back; the weight values are exact
either way (the kernel dequantizes in fp32), and rounding activations to bf16
is far below the 4-bit weight error.

Large batches are compute-bound and the kernel has no AMX path, so above a
row count the weight is dequantized (unpacked from the kernel's layout) and
the bf16 GEMM runs instead; `Int4Linear(keep_dense=True)` skips even that by
keeping the dense weight.

The packed layout is private to PyTorch and depends on the CPU's vector
width (N is cut into blocks of 64 rows on AVX512, 32 on AVX2, each block
stored k-major with its rows' nibbles interleaved). `_kernel_layout` learns it
once from tiny probes and checks it on a random weight; if it ever does not
hold, large batches simply run the kernel too. Off the CPU (or without the
op) the weight is kept as plain nibble pairs along K and always dequantized."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

INT4_GROUP_SIZE = 32
KERNEL_GROUP_SIZES = (32, 64, 128, 256)
# Row thresholds, measured at 2 threads on 30 layers of SmolLM2-135M's shapes
# (960x576, 576x576, 3072x576, 576x1536; 212 MB of bf16 weights cycling
# through the caches, as in a decode step), ms per pass:
#   rows            1     4     8    10    12    16    32    64   128   256
#   bf16 GEMM     23.3  23.9  23.7  22.9  24.1  22.4  25.4  33.2  38.4  64.7
#   int8 kernel   10.2  12.5  26.6  31.1  36.6  38.6  70.4   123   237   446
#   int4 kernel    4.8   8.2  14.7  20.6  22.7  25.0  52.9   107   179   362
#   int4 dequant   129   135   122   140   136   118   140   119   134   165
# (dequant = unpack + dequantize to bf16 + bf16 GEMM, the compact path.)
# With the dense weight kept, rows at or below this use the int4 kernel, above
# it the bf16 GEMM (AMX); the kernel stops winning at 12 to 16 rows.
INT4_KERNEL_MAX_ROWS = 10
# Without it, rows below this run the kernel, from it on dequantize + GEMM
# (crossover between 64 and 128 rows; the dequantization costs ~1 ns a weight).
INT4_DEQUANT_MIN_ROWS = 96


def has_int4_kernel() -> bool:
    ops = torch.ops.aten
    return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu")


def _kernel_format(device: torch.device) -> bool:
    return device.type == "cpu" and has_int4_kernel()


def int4_group_size(n: int, k: int, group_size: int = INT4_GROUP_SIZE) -> int | None:
    """The group size a [n, k] weight quantizes with, or None when int4 does not
    fit it (the caller then keeps the layer in int8). A group that does not
    divide K falls back to the next larger one the kernel takes that does; as
    every kernel group size is a multiple of 32, from the default 32 that
    rescues nothing, so such a K (and an N not a multiple of 16) means None."""
    if n % 16:
        return None
    for g in (group_size, *[g for g in KERNEL_GROUP_SIZES if g > group_size]):
        if g in KERNEL_GROUP_SIZES and k % g == 0:
            return g
    return None


def quantize_int4(w: torch.Tensor, group_size: int = INT4_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (uint8 [N, K] levels 0..15, bf16 scales_zeros [K // g, N, 2]).
    Asymmetric min/max per group of `group_size` along K, 16 levels."""
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"group size {group_size} does not divide K={k}")
    wg = w.float().reshape(n, k // group_size, group_size)
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
    scale = ((hi - lo) / 15).to(torch.bfloat16)
    # Levels 0..15 centered on the group's midpoint (level 7.5 = (lo + hi) / 2),
    # so the bf16 rounding of scale (up to 2^-8 relative) moves the outer
    # levels by at most 7.5 * 2^-8 of a step rather than 15 * 2^-8.
    zero = ((lo + hi) / 2 + scale.float() / 2).to(torch.bfloat16)
    s = scale.float().clamp(min=torch.finfo(torch.float32).tiny)  # a constant group has scale 0
    q = torch.round((wg - zero.float()[..., None]) / s[..., None] + 8).clamp(0, 15).to(torch.uint8)
    scales_zeros = torch.stack((scale, zero), dim=-1).transpose(0, 1).contiguous()
    return q.reshape(n, k), scales_zeros


def dequantize_int4(q: torch.Tensor, scales_zeros: torch.Tensor, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 levels [N, K] -> [N, K] weight in `dtype`. One addcmul computes
    zero + (q - 8) * scale in fp32 and rounds once, as the kernel does. It runs
    on the transpose, [K // g, g, N], where scales_zeros is already laid out
    with N innermost (several times faster than broadcasting scales along K); the result
    is the transposed view of a contiguous [K, N], which F.linear takes as is.
    unpack_int4 returns the kernel's levels in that layout too."""
    n, k = q.shape
    scale, zero = (scales_zeros[..., i].to(dtype).unsqueeze(1).contiguous() for i in (0, 1))  # [K // g, 1, N]
    levels = (q.T.view(torch.int8) - 8).to(dtype).reshape(k // group_size, group_size, n).contiguous()
    return torch.addcmul(zero, levels, scale).view(k, n).T


def int4_linear_ref(
    x: torch.Tensor, q: torch.Tensor, scales_zeros: torch.Tensor, group_size: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """The plain reference: float32 math on the dequantized weight."""
    n, k = q.shape
    sz = scales_zeros.float().repeat_interleave(group_size, dim=0)  # [K, N, 2]
    w = (q.float() - 8) * sz[..., 0].T + sz[..., 1].T
    y = x.float() @ w.T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# --- packing -------------------------------------------------------------------

def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 bytes -> their nibbles in order (low first), flat."""
    flat = packed.reshape(-1)
    return torch.stack((flat & 15, flat >> 4), dim=-1).reshape(-1)


def _kernel_pack(q: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)


def _unpack_runs(runs: torch.Tensor, order: torch.Tensor | str) -> torch.Tensor:
    """[..., rows / 2] bytes -> [..., rows] levels in row order."""
    lo, hi = runs & 15, runs >> 4
    if isinstance(order, str):
        return torch.cat((lo, hi), -1) if order == "split" else torch.stack((lo, hi), -1).flatten(-2)
    return torch.stack((lo, hi), -1).flatten(-2)[..., order]


@functools.lru_cache(maxsize=None)
def _kernel_layout() -> tuple[int, dict[int, torch.Tensor | str]] | None:
    """(block, {rows: order}): the kernel packs N in blocks of `block` rows
    (the last one `rows` < block), each block stored as K runs of rows / 2
    bytes; within a run, row j's level is the nibble at position order[j]
    (low nibble first). Two orders have fast paths: "pairs" (rows 2i, 2i+1
    share byte i) and "split" (row i in the low nibble of byte i, row
    rows/2 + i in its high nibble). Learned from probes with K = 2 and checked
    on random weights with full and partial blocks; None if no candidate
    block size reproduces them (or a probe fails outright)."""
    if not has_int4_kernel():
        return None
    try:
        return _learn_kernel_layout()
    except RuntimeError:
        return None


def _learn_kernel_layout() -> tuple[int, dict[int, torch.Tensor | str]] | None:
    for block in (64, 32, 16):
        orders: dict[int, torch.Tensor | str] = {}
        for rows in range(16, block + 1, 16):
            n = torch.arange(rows)[:, None].expand(rows, 2)
            lo = _nibbles(_kernel_pack(n % 16))[:rows]
            hi = _nibbles(_kernel_pack(n // 16))[:rows]
            row_at = lo.long() + 16 * hi.long()  # which row each nibble of the k = 0 run holds
            if not torch.equal(row_at.sort().values, torch.arange(rows)):
                break
            order = row_at.argsort()
            if torch.equal(order, torch.arange(rows)):
                order = "pairs"
            elif torch.equal(order, torch.cat((torch.arange(0, rows, 2), torch.arange(1, rows, 2)))):
                order = "split"
            orders[rows] = order
        else:
            layout = (block, orders)
            g = torch.Generator().manual_seed(0)
            for n_rows in (block * 2, block * 2 + 16, block + 48):
                q = torch.randint(0, 16, (n_rows, 64), generator=g, dtype=torch.uint8)
                if not torch.equal(_kernel_unpack(_kernel_pack(q), n_rows, 64, layout), q):
                    break
            else:
                return layout
    return None


def _kernel_unpack(packed: torch.Tensor, n: int, k: int, layout: tuple[int, dict[int, torch.Tensor | str]]) -> torch.Tensor:
    """The kernel's packed weight -> levels [N, K], as the transposed view of a
    contiguous [K, N] (what dequantize_int4 runs fastest on)."""
    block, orders = layout
    flat = packed.reshape(-1)
    full, tail = divmod(n, block)
    split = full * k * block // 2
    parts = []
    if full:
        runs = _unpack_runs(flat[:split].view(full, k, block // 2), orders[block])  # [full, K, block]
        parts.append(runs.transpose(0, 1).reshape(k, full * block))
    if tail:
        parts.append(_unpack_runs(flat[split:].view(k, tail // 2), orders[tail]))
    return (torch.cat(parts, dim=1) if len(parts) > 1 else parts[0].contiguous()).T


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 levels [N, K] -> [N, K // 2] uint8: the kernel's layout on a CPU
    with the op, else plain pairs (k even in the low nibble)."""
    if _kernel_format(q.device):
        return _kernel_pack(q)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor | None:
    """Inverse of pack_int4; None when the kernel layout is unknown."""
    if _kernel_format(packed.device):
        layout = _kernel_layout()
        return None if layout is None else _kernel_unpack(packed, packed.shape[0], k, layout)
    return torch.stack((packed & 15, packed >> 4), dim=-1).reshape(packed.shape[0], k)


def int4_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales_zeros: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
    dequant_min_rows: int = INT4_DEQUANT_MIN_ROWS,
) -> torch.Tensor:
    k, n = x.shape[-1], scales_zeros.shape[1]
    rows = x.numel() // k
    if _kernel_format(packed.device) and (rows < dequant_min_rows or _kernel_layout() is None):
        xb = x.reshape(rows, k).to(torch.bfloat16).contiguous()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, group_size, scales_zeros)
        y = y.reshape(*x.shape[:-1], n).to(x.dtype)
        return y if bias is None else y + bias
    w = dequantize_int4(unpack_int4(packed, k), scales_zeros, group_size, x.dtype)
    return F.linear(x, w, bias)
