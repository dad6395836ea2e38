"""Linear layers with the weight formats jevons serves.

Models are written with plain nn.Linear; after loading, `quantize_model`
swaps them for a quantized variant in place, so every architecture gets every
format without its own code."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from jevons.kernels.cpu import qgemm

from jevons.kernels.torch_ref.int4_linear import (
    INT4_KERNEL_MAX_ROWS,
    int4_group_size,
    int4_linear,
    pack_int4,
    quantize_int4,
)
from jevons.kernels.torch_ref.int8_linear import INT8_KERNEL_MAX_ROWS, int8_linear, quantize_int8

# int8: int8 weights for small batches (decode, memory-bound) and the original
#   dense weights kept for large ones (prefill, batched decode, compute-bound):
#   1.5x the memory of bf16, the best of both speeds.
# int8-compact: int8 weights only; large batches dequantize on the fly.
# int4: group-wise (32) asymmetric int4 weights for small batches, a quarter of
#   the bytes of bf16, plus the dense weights for large ones (1.3x bf16's memory).
# int4-compact: int4 weights only (0.31x bf16's memory); large batches
#   dequantize on the fly. A layer int4 does not fit (K not a multiple of 32,
#   N not of 16) gets int8 instead, and so does the output head (see below).
QUANTIZATIONS = ("none", "int8", "int8-compact", "int4", "int4-compact")


def resolve_quantization(requested: str, stored_bits: int | None, dtype: torch.dtype, device: torch.device) -> str:
    """What "auto" means: serve a 4-bit GGUF at 4 bits (int4, keeping the
    dense weights for prefill) when it runs in bf16 on the CPU, where the int4
    kernel runs; a group-32 int4 quantizer recovers Q4_0/Q4_1 weights almost
    exactly (SmolLM2-135M Q4_1: perplexity 31.98 either way). Everything else,
    including 8-bit GGUFs (per-channel int8 re-quantizes Q8_0 blocks), stays
    dense. Any other value passes through."""
    if requested != "auto":
        return requested
    if stored_bits == 4 and dtype == torch.bfloat16 and device.type == "cpu":
        return "int4"
    return "none"


QGEMM_ENV = "JEVONS_QGEMM"


def use_qgemm(weight: torch.Tensor) -> bool:
    """Whether a layer with this weight runs on jevons's own group-quantized
    kernel (kernels/cpu/qgemm.py: VNNI dot products on int8 activations,
    faster than PyTorch's weight-only kernels at every decode batch size);
    otherwise it keeps PyTorch's formats and kernels. JEVONS_QGEMM=0 forces
    the latter."""
    n, k = weight.shape
    return (
        os.environ.get(QGEMM_ENV, "1").strip().lower() not in ("0", "false", "off", "no")
        and weight.device.type == "cpu" and qgemm.fits(n, k) and qgemm.available()
    )


class _QgemmPath:
    """The forward shared by both bit widths when `self.qw` is set: the kernel
    at decode sizes, the dense layer (or a dequantized weight) above them."""

    qw: qgemm.QWeight | None
    dense: nn.Module | None
    bias: torch.Tensor | None

    def _qgemm_forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if self.dense is not None:
            if rows > qgemm.MAX_ROWS[self.qw.bits]:
                return self.dense(x)
        elif rows > qgemm.COMPACT_MAX_ROWS:
            return F.linear(x, qgemm.dequantize(self.qw, x.dtype), self.bias)
        return qgemm.qgemm(x, self.qw, self.bias)


class Int8Linear(nn.Module, _QgemmPath):
    """Per output channel int8 on PyTorch's kernel, or per group of 32 (ggml's
    Q8_0 grid) on jevons's kernel where it runs (`use_qgemm`)."""

    def __init__(self, linear: nn.Linear, keep_dense: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.qw = None
        if use_qgemm(linear.weight):
            u, scale = qgemm.quantize_int8_grouped(linear.weight.data)
            self.qw = qgemm.pack(u, scale, None, 8)
            self.register_buffer("qweight", self.qw.blob)
            self.scale = None
        else:
            q, scale = quantize_int8(linear.weight.data)
            self.register_buffer("qweight", q)
            self.register_buffer("scale", scale)
        self.bias = linear.bias
        # The original layer (a module, so weight prepacking can swap it too).
        self.dense = linear if keep_dense else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qw is not None:
            return self._qgemm_forward(x)
        if self.dense is not None and x.numel() // x.shape[-1] > INT8_KERNEL_MAX_ROWS:
            return self.dense(x)
        return int8_linear(x, self.qweight, self.scale, self.bias)


class Int4Linear(nn.Module, _QgemmPath):
    """Asymmetric int4 in groups along K (the same grid either way) on
    PyTorch's kernel, or on jevons's where it runs (`use_qgemm`, group 32)."""

    def __init__(self, linear: nn.Linear, keep_dense: bool = False, group_size: int | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size = group_size or int4_group_size(self.out_features, self.in_features)
        if self.group_size is None:
            raise ValueError(f"int4 does not fit a {self.out_features}x{self.in_features} weight")
        q, scales_zeros = quantize_int4(linear.weight.data, self.group_size)
        self.qw = None
        if self.group_size == qgemm.GROUP and use_qgemm(linear.weight):
            self.qw = qgemm.pack(q, scales_zeros[..., 0].T, scales_zeros[..., 1].T, 4)
            self.register_buffer("qweight", self.qw.blob)
            self.scales_zeros = None
        else:
            self.register_buffer("qweight", pack_int4(q))
            self.register_buffer("scales_zeros", scales_zeros)
        self.bias = linear.bias
        self.dense = linear if keep_dense else None  # see Int8Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qw is not None:
            return self._qgemm_forward(x)
        if self.dense is not None and x.numel() // x.shape[-1] > INT4_KERNEL_MAX_ROWS:
            return self.dense(x)
        return int4_linear(x, self.qweight, self.scales_zeros, self.group_size, self.bias)


def quantized_linear(linear: nn.Linear, method: str) -> nn.Module:
    keep = not method.endswith("-compact")
    if method.startswith("int4") and int4_group_size(linear.out_features, linear.in_features) is not None:
        return Int4Linear(linear, keep_dense=keep)
    return Int8Linear(linear, keep_dense=keep)


# lm_head gets its own copy below; MLA's kv_b_proj weight is read directly
# (absorbed into the attention), so it must stay an nn.Linear.
SKIP = ("lm_head", "kv_b_proj")


def quantize_model(model: nn.Module, method: str, skip: tuple[str, ...] = SKIP) -> int:
    """Replace nn.Linear submodules in place; returns how many were replaced.

    The output head (an nn.Linear, or the embedding when tied) is read in full
    every decode step; on a small model it is a fifth of the bytes. It gets an
    int8 copy in `model.fast_head`, which compute_logits prefers, while
    the embedding lookup keeps its full-precision rows. The head stays int8
    under int4 too: on SmolLM2-135M (its GGUF is Q4_1 but for a Q8_0
    embedding; bf16 perplexity 32.02) int4 layers with an int8 head score
    31.98, with an int4 head 33.32, 4% worse."""
    if method == "none":
        return 0
    if method not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {method!r}; choose one of {QUANTIZATIONS}")
    targets = [
        (name, mod) for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and not any(s in name for s in skip)
    ]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, quantized_linear(mod, method))
    head = output_head(model)
    if head is not None:
        model.fast_head = quantized_linear(head, method.replace("int4", "int8"))
    return len(targets)


def output_head(model: nn.Module) -> nn.Linear | None:
    """The output projection as an nn.Linear (sharing the embedding's weight
    when tied), for models whose compute_logits prefers `model.fast_head`."""
    if not getattr(model, "supports_fast_head", False):
        return None
    head = getattr(model, "lm_head", None)
    if head is None and isinstance(getattr(model, "embed_tokens", None), nn.Embedding):
        weight = model.embed_tokens.weight
        head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        head.weight = weight
    return head if isinstance(head, nn.Linear) else None
