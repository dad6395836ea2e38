"""Routed experts on qgemm's format, the whole layer in one C call
(kernels/cpu/moe_qgemm.py): where qgemm runs, `-q int4` on a CPU serves a
DeepSeek MoE's routed experts this way instead of layers/moe_int4.py's
per-expert Python loop.

Each expert's gate/up ([2I, H]) and down ([H, I]) weights are qgemm blobs
(4-bit levels on Int4Linear's grid when quantized here, or a GGUF's own
Q4_0/Q4_1/Q4_K/Q8_0 blocks taken as they are: loader/gguf_quant.py), stacked
over the experts this rank holds; ids are local (0 .. E-1), as DeepseekMoE
passes them, and pairs routed elsewhere (expert parallelism) add nothing.
`dequantized()` is the exact float model the reference runs to check it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from jevons import runtime
from jevons.kernels.cpu import moe_qgemm, qgemm, qgemm_quant
from jevons.kernels.torch_ref.int4_linear import quantize_int4

# HF name -> its stored levels ([E * N, K] rows for stacked experts), or None.
LevelsFor = Callable[[str], Any]


def _int4(w: torch.Tensor) -> qgemm.QWeight:
    """One [N, K] float weight at 4 bits, Int4Linear's qgemm grid (in C where
    the library is: kernels/cpu/qgemm_quant.py, the same bytes)."""
    packed = qgemm_quant.quantize(w, 4) if w.dtype in (torch.float32, torch.bfloat16) else None
    if packed is not None:
        return packed
    q, sz = quantize_int4(w.float(), qgemm.GROUP)
    scale, zero = sz[..., 0].T.float(), sz[..., 1].T.float()
    return qgemm.pack(q, scale, zero - 8 * scale, 4)  # (q - 8) * s + z == q * s + (z - 8 s)


def _from_levels(levels: Any, e: int, e_count: int) -> qgemm.QWeight:
    """Expert e's slice of stacked levels u/scale/zero [E * N, K]."""
    n = levels.u.shape[0] // e_count
    sel = slice(e * n, (e + 1) * n)
    # pack drops zeros a symmetric grid implies (Q4_0, Q8_0)
    return qgemm.pack(levels.u[sel], levels.scale[sel], levels.zero[sel], levels.bits)


class QgemmExperts(nn.Module):
    """Stacked routed experts (models/layers/moe.StackedExperts' w13 [E, 2I, H]
    gate rows then up rows, w2 [E, H, I]) on the fused kernel."""

    def __init__(self, w13: moe_qgemm.StackedQWeights, w2: moe_qgemm.StackedQWeights) -> None:
        super().__init__()
        self.w13, self.w2 = w13, w2
        self.num_experts, self.hidden, self.inter = w13.num_experts, w13.k, w2.k
        self.register_buffer("w13_blob", w13.blob)
        self.register_buffer("w2_blob", w2.blob)

    @classmethod
    def from_float(cls, w13: torch.Tensor, w2: torch.Tensor) -> "QgemmExperts":
        """Quantize float stacked experts to 4 bits, one expert at a time."""
        return cls(moe_qgemm.StackedQWeights.stack([_int4(w) for w in w13]),
                   moe_qgemm.StackedQWeights.stack([_int4(w) for w in w2]))

    def dequantized(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(w13, w2): the exact float weights these levels stand for."""
        return self.w13.dequantize(dtype), self.w2.dequantize(dtype)

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        return moe_qgemm.moe_qgemm(x, self.w13, self.w2, topk_weights, topk_ids)


def fits(moe: nn.Module, device: torch.device | None = None) -> bool:
    """Whether a DeepseekMoE's experts can run on the fused kernel here (on
    `device`, by default where its stacked weights are)."""
    ex = moe.experts
    device = device or ex.w13.device
    return (runtime.current().qgemm and qgemm.available() and device.type == "cpu"
            and moe_qgemm.fits(ex.hidden, ex.inter))  # JEVONS_QGEMM=0 keeps Int4Experts


def _stored(levels_for: LevelsFor | None, prefix: str, proj: str, e_count: int, n: int, k: int) -> Any:
    """The checkpoint's stacked levels of one projection when they map exactly
    and have the shape this rank holds (whole experts), else None."""
    if levels_for is None:
        return None
    lv = levels_for(f"{prefix}.experts.{proj}.weight")
    if lv is None or tuple(lv.u.shape) != (e_count * n, k):
        return None
    return lv


# (projection, expert) -> that expert's float [N, K] weight
ReadExpert = Callable[[str, int], torch.Tensor]


def _float_experts(moe: nn.Module) -> ReadExpert:
    """Experts read from the loaded float stacked weights."""
    ex = moe.experts

    def read(proj: str, e: int) -> torch.Tensor:
        if proj == "down_proj":
            return ex.w2.data[e]
        half = ex.inter
        return ex.w13.data[e, :half] if proj == "gate_proj" else ex.w13.data[e, half:]
    return read


# projection -> its experts already packed (this rank's shape), or None
StackedFor = Callable[[str], "moe_qgemm.StackedQWeights | None"]


def install(moe: nn.Module, levels_for: LevelsFor | None = None, prefix: str = "",
            read: ReadExpert | None = None, stacked_for: StackedFor | None = None) -> bool:
    """Serve a DeepseekMoE's routed experts on the fused kernel (its
    `int4_experts`, which DeepseekMoE._routed calls), freeing the float
    stacked weights; False (nothing changed) where the kernel does not run.
    Projections the checkpoint stores on qgemm's grid keep those levels
    (`levels_for`, a GGUF's blocks, `prefix` the layer's HF name like
    "model.layers.3.mlp"; or `stacked_for`, the same blocks packed by the
    caller); the rest are quantized to 4 bits from floats, one expert at a
    time: `read` gives them (runner/direct_load.py reads the file), by
    default the loaded stacked weights."""
    if not fits(moe):
        return False
    ex = moe.experts
    read = read or _float_experts(moe)
    e_count, hidden, inter = ex.num_experts, ex.hidden, ex.inter
    shapes = {"gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}
    if stacked_for is None:
        def stacked_for(proj: str) -> moe_qgemm.StackedQWeights | None:
            lv = _stored(levels_for, prefix, proj, e_count, *shapes[proj])
            if lv is None:
                return None
            return moe_qgemm.StackedQWeights.stack([_from_levels(lv, e, e_count) for e in range(e_count)])
    gate, up = stacked_for("gate_proj"), stacked_for("up_proj")
    if gate is not None and up is not None and gate.bits == up.bits:
        w13 = _cat_stacked(gate, up)
    else:
        w13 = moe_qgemm.StackedQWeights.stack([
            _int4(torch.cat((read("gate_proj", e), read("up_proj", e)))) for e in range(e_count)])
    del gate, up
    w2 = stacked_for("down_proj")
    if w2 is None:
        w2 = moe_qgemm.StackedQWeights.stack([_int4(read("down_proj", e)) for e in range(e_count)])
    moe.int4_experts = QgemmExperts(w13, w2)
    ex.w13 = nn.Parameter(torch.empty(0), requires_grad=False)
    ex.w2 = nn.Parameter(torch.empty(0), requires_grad=False)
    return True


def _cat_stacked(a: moe_qgemm.StackedQWeights, b: moe_qgemm.StackedQWeights) -> moe_qgemm.StackedQWeights:
    """Per expert, gate rows then up rows: tiles of 16 rows stack along N as
    they are where both store zeros or neither (else both with zeros)."""
    if a.has_zero != b.has_zero:
        a, b = a.with_zeros(), b.with_zeros()
    return moe_qgemm.StackedQWeights(torch.cat((a.blob, b.blob), dim=1), a.n + b.n, a.k, a.bits, a.has_zero)
