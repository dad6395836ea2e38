"""Linear layers with the weight formats jevons serves.

Models are written with plain nn.Linear; after loading, `quantize_model`
swaps them for a quantized variant in place, so every architecture gets every
format without its own code."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from jevons import runtime
from jevons.kernels.cpu import qgemm, qgemm_quant

from jevons.kernels.torch_ref.int4_linear import (
    INT4_KERNEL_MAX_ROWS,
    dequantize_int4,
    int4_group_size,
    int4_linear,
    pack_int4,
    quantize_int4,
)
from jevons.kernels.torch_ref.int8_linear import INT8_KERNEL_MAX_ROWS, dequantize_int8, int8_linear, quantize_int8

# One model on every path: the quantized weights ARE the model. Every row of
# every step (a decode row, a prefill row, a chunk after a prefix-cache hit, a
# row of a batch of any size) computes the same function of them:
# - where jevons's qgemm kernel runs (AVX512-VNNI or AVX2), every row count runs it;
#   it is row-independent by construction (per-row int8 activations, integer
#   dot products, a fixed order over groups), so a row's result does not
#   depend on what else is in the batch, and no dense copy is kept;
# - elsewhere PyTorch's weight-only kernels run small batches, and large ones
#   run the GEMM on a dense copy that is the exact dequantization of the
#   quantized weights (rounded once to the model's dtype), never the original
#   weights: the two differ only by that rounding and accumulation order.
# int8 / int4: as above; "-compact" keeps no dense copy where the kernel is
#   PyTorch's (large batches dequantize on the fly, the same numbers).
# A layer int4 does not fit (K not a multiple of 32, N not of 16) gets int8
# instead, and so does the output head (see below).
QUANTIZATIONS = ("none", "int8", "int8-compact", "int4", "int4-compact")


def resolve_quantization(requested: str, stored_bits: int | None, dtype: torch.dtype, device: torch.device) -> str:
    """What "auto" means: serve a 4-bit GGUF at 4 bits (int4) on a CPU where
    jevons's qgemm kernel runs (AVX512-VNNI or AVX2), in bf16 or float32, for
    every row (decode and prefill alike); the GGUF's own 4-bit levels are kept
    (see loader/gguf_quant.py), not re-rounded. Everything else stays dense:
    the GGUF's exact dequantization. That includes CPUs without the kernel
    (PyTorch's int4 kernel only wins at a few rows, and would make prefill and
    decode two different functions). On SmolLM2-135M's Q4_1 file, float32
    int4 scores -0.27% (prefill path) and -0.37% (decode path) against
    llama-perplexity on the same file, inside the 1% gate, and decodes at
    batch 1 about as fast as llama.cpp where dense float32 is 0.2x
    (docs/benchmarks.md, "AVX2 kernels"). Any other value passes through."""
    if requested != "auto":
        return requested
    if stored_bits == 4 and dtype in (torch.bfloat16, torch.float32) and device.type == "cpu" and qgemm.available():
        return "int4"
    return "none"


QGEMM_ENV = "JEVONS_QGEMM"


def use_qgemm(weight: torch.Tensor) -> bool:
    """Whether a layer with this weight runs on jevons's own group-quantized
    kernel (kernels/cpu/qgemm.py: VNNI or AVX2 dot products on int8 activations,
    faster than PyTorch's weight-only kernels at every decode batch size);
    otherwise it keeps PyTorch's formats and kernels. JEVONS_QGEMM=0 forces
    the latter."""
    n, k = weight.shape
    return (
        runtime.current().qgemm
        and weight.device.type == "cpu" and qgemm.fits(n, k) and qgemm.available()
    )


def _dense_copy(linear: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    """The layer for large batches: `linear` with its weight replaced by the
    exact dequantization of the quantized one (so both paths are one model)."""
    dense = nn.Linear(linear.in_features, linear.out_features, bias=False, device="meta")
    dense.weight = nn.Parameter(weight.to(linear.weight.dtype), requires_grad=False)
    dense.bias = linear.bias
    return dense


class Int8Linear(nn.Module):
    """Per output channel int8 on PyTorch's kernel, or per group of 32 (ggml's
    Q8_0 grid) on jevons's kernel where it runs (`use_qgemm`)."""

    def __init__(self, linear: nn.Linear, keep_dense: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.qw = None
        self.dense = None
        if use_qgemm(linear.weight):
            # In C in one pass where the library is (the same bytes, tests/test_qgemm_quant.py).
            self.qw = qgemm_quant.quantize(linear.weight.data, 8)
            if self.qw is None:
                u, scale = qgemm.quantize_int8_grouped(linear.weight.data)
                self.qw = qgemm.pack(u, scale, None, 8)
            self.register_buffer("qweight", self.qw.blob)
            self.scale = None
        else:
            q, scale = quantize_int8(linear.weight.data)
            self.register_buffer("qweight", q)
            self.register_buffer("scale", scale)
            if keep_dense:  # a module, so weight prepacking can swap it too
                self.dense = _dense_copy(linear, dequantize_int8(q, scale, torch.float32))
        self.bias = linear.bias

    @classmethod
    def from_qweight(cls, qw: qgemm.QWeight, bias: torch.Tensor | None) -> "Int8Linear":
        """A layer over levels packed elsewhere (a GGUF's Q8_0 blocks, exactly)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.in_features, self.out_features = qw.k, qw.n
        self.qw, self.dense, self.scale, self.bias = qw, None, None, bias
        self.register_buffer("qweight", qw.blob)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qw is not None:
            return qgemm.qgemm(x, self.qw, self.bias)
        # PyTorch's int8 kernel is several times slower than the dense GEMM on
        # fp32 activations (measured 8x on an AVX2 CPU): fp32 takes the dense route.
        if x.dtype != torch.bfloat16:
            if self.dense is not None:
                return self.dense(x)
            return F.linear(x, dequantize_int8(self.qweight, self.scale, x.dtype), self.bias)
        if self.dense is not None and x.numel() // x.shape[-1] > INT8_KERNEL_MAX_ROWS:
            return self.dense(x)
        return int8_linear(x, self.qweight, self.scale, self.bias)


def qgemm_int4(w: torch.Tensor) -> qgemm.QWeight:
    """[N, K] float at 4 bits on qgemm's grid through torch: quantize_int4's
    levels (its grid is (q - 8) * scale + zero; the kernel's q * scale + zero).
    kernels/cpu/qgemm_quant.py writes the same bytes in C."""
    q, scales_zeros = quantize_int4(w, qgemm.GROUP)
    scale, zero = scales_zeros[..., 0].T.float(), scales_zeros[..., 1].T.float()
    return qgemm.pack(q, scale, zero - 8 * scale, 4)


class Int4Linear(nn.Module):
    """Asymmetric int4 in groups along K (the same grid either way) on
    PyTorch's kernel, or on jevons's where it runs (`use_qgemm`, group 32)."""

    def __init__(self, linear: nn.Linear, keep_dense: bool = False, group_size: int | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size = group_size or int4_group_size(self.out_features, self.in_features)
        if self.group_size is None:
            raise ValueError(f"int4 does not fit a {self.out_features}x{self.in_features} weight")
        self.qw = None
        self.dense = None
        if self.group_size == qgemm.GROUP and use_qgemm(linear.weight):
            self.qw = qgemm_quant.quantize(linear.weight.data, 4) or qgemm_int4(linear.weight.data)
            self.register_buffer("qweight", self.qw.blob)
            self.scales_zeros = None
        else:
            q, scales_zeros = quantize_int4(linear.weight.data, self.group_size)
            self.register_buffer("qweight", pack_int4(q))
            self.register_buffer("scales_zeros", scales_zeros)
            if keep_dense:  # see Int8Linear
                w = dequantize_int4(q, scales_zeros, self.group_size, torch.float32)
                self.dense = _dense_copy(linear, w)
        self.bias = linear.bias

    @classmethod
    def from_qweight(cls, qw: qgemm.QWeight, bias: torch.Tensor | None) -> "Int4Linear":
        """A layer over levels packed elsewhere (a GGUF's Q4_0/Q4_1 blocks, exactly)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.in_features, self.out_features = qw.k, qw.n
        self.group_size = qgemm.GROUP
        self.qw, self.dense, self.scales_zeros, self.bias = qw, None, None, bias
        self.register_buffer("qweight", qw.blob)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qw is not None:
            return qgemm.qgemm(x, self.qw, self.bias)
        # PyTorch's int4 kernel rounds fp32 activations to bf16: for fp32 the
        # dense copy (or the on-the-fly dequantization) is the one function.
        big = x.numel() // x.shape[-1] > INT4_KERNEL_MAX_ROWS or x.dtype != torch.bfloat16
        if self.dense is not None and big:
            return self.dense(x)
        if x.dtype != torch.bfloat16:
            return int4_linear(x, self.qweight, self.scales_zeros, self.group_size, self.bias, dequant_min_rows=0)
        return int4_linear(x, self.qweight, self.scales_zeros, self.group_size, self.bias)


# HF weight name -> its stored levels (loader/gguf_quant.QuantLevels: u, scale,
# zero, bits) when the checkpoint holds them on qgemm's grid, else None.
LevelsFor = Callable[[str], Any]


def quantized_linear(linear: nn.Linear, method: str, levels: Any = None) -> nn.Module:
    """`linear` at `method`; from the checkpoint's own levels when they are
    given and fit (the GGUF's blocks, not rounded again), else quantized
    from its dense weight."""
    keep = not method.endswith("-compact")
    int4 = method.startswith("int4") and int4_group_size(linear.out_features, linear.in_features) is not None
    packed = linear_from_levels(linear.out_features, linear.in_features, linear.weight.device, linear.bias,
                                method, levels)
    if packed is not None:
        return packed
    if int4:
        return Int4Linear(linear, keep_dense=keep)
    return Int8Linear(linear, keep_dense=keep)


def stored_bits_taken(out_features: int, in_features: int, device: torch.device, method: str) -> int | None:
    """The width stored levels must have for quantized_linear to pack them as
    they are (4 where `method` is int4 and int4 fits the layer, else 8), or
    None where qgemm does not run for the layer."""
    # use_qgemm looks at a weight's shape and device only: a stand-in with no memory
    if not use_qgemm(torch.empty((1, 1), device=device).expand(out_features, in_features)):
        return None
    return 4 if method.startswith("int4") and int4_group_size(out_features, in_features) is not None else 8


def linear_from_qweight(qw: qgemm.QWeight, bias: torch.Tensor | None) -> nn.Module:
    """The layer over weights packed elsewhere (width as stored_bits_taken asked)."""
    return (Int4Linear if qw.bits == 4 else Int8Linear).from_qweight(qw, bias)


def linear_from_levels(out_features: int, in_features: int, device: torch.device, bias: torch.Tensor | None,
                       method: str, levels: Any) -> nn.Module | None:
    """The layer quantized_linear makes from stored levels (packed as they
    are, no float weight needed), or None when they do not fit `method` here."""
    if levels is None or levels.bits != stored_bits_taken(out_features, in_features, device, method) \
            or tuple(levels.u.shape) != (out_features, in_features):
        return None
    # pack drops zeros a symmetric grid implies (Q4_0, Q8_0)
    return linear_from_qweight(qgemm.pack(levels.u, levels.scale, levels.zero, levels.bits), bias)


# Fused projections of models without their own `stacked` map (DeepSeek's
# dense MLP and shared experts are LlamaMLPs: gate rows, then up rows).
_GATE_UP = {".gate_proj.": (".gate_up_proj.", 0), ".up_proj.": (".gate_up_proj.", 1)}


def checkpoint_parts(model: nn.Module, module_name: str) -> list[str]:
    """The checkpoint tensors a module's weight is loaded from, in row order:
    several, stacked along N, for a fused q/k/v or gate/up projection (the
    model's `stacked`), else the module's own HF name."""
    name = f"model.{module_name}.weight"
    stacked = getattr(model, "stacked", None) or _GATE_UP
    return [name.replace(fused, frag) for frag, (fused, _) in stacked.items() if fused in name] or [name]


def stored_levels(parts: list[str], levels_for: LevelsFor | None) -> Any:
    """The parts' stored levels stacked along N, or None if any part has none."""
    if levels_for is None:
        return None
    found = [levels_for(n) for n in parts]
    if any(f is None for f in found) or len({f.bits for f in found}) != 1:
        return None
    if len(found) == 1:
        return found[0]
    return type(found[0])(*(torch.cat([getattr(f, a) for f in found]) for a in ("u", "scale", "zero")), found[0].bits)


def _stored_levels(model: nn.Module, module_name: str, levels_for: LevelsFor | None) -> Any:
    """The stored levels of a module's weight (`checkpoint_parts`), or None."""
    return stored_levels(checkpoint_parts(model, module_name), levels_for)


# lm_head gets its own copy below; MLA's kv_b_proj weight is read directly
# (absorbed into the attention), so its layer quantizes it (`quantize_owned`).
SKIP = ("lm_head", "kv_b_proj")


def quantize_model(model: nn.Module, method: str, skip: tuple[str, ...] = SKIP,
                   levels_for: LevelsFor | None = None) -> int:
    """Replace nn.Linear submodules in place; returns how many were replaced.
    With `levels_for`, layers whose checkpoint stores them on the kernel's
    grid (a GGUF's Q4_0/Q4_1/Q8_0/Q4_K blocks) keep those exact levels.

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
    # A quantized layer's own dense copy (for large batches) is no target:
    # layers built before (runner/direct_load.py) may hold one already.
    done = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, (Int8Linear, Int4Linear)))
    targets = [
        (name, mod) for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and not any(s in name for s in skip) and not name.startswith(done)
    ]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, quantized_linear(mod, method, _stored_levels(model, name, levels_for)))
    for mod in list(model.modules()):  # weights a layer reads itself (MLA's kv_b_proj: layers/mla_kv_b.py)
        if hasattr(mod, "quantize_owned"):
            mod.quantize_owned(method)
    head = output_head(model)
    if head is not None:
        head_name = "lm_head.weight" if head is getattr(model, "lm_head", None) else "model.embed_tokens.weight"
        levels = levels_for(head_name) if levels_for is not None else None
        model.fast_head = quantized_linear(head, method.replace("int4", "int8"), levels)
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
