"""Linear layers with the weight formats jevons serves.

Models are written with plain nn.Linear; after loading, `quantize_model`
swaps them for a quantized variant in place, so every architecture gets every
format without its own code."""
from __future__ import annotations

import torch
from torch import nn

from jevons.kernels.torch_ref.int8_linear import INT8_KERNEL_MAX_ROWS, int8_linear, quantize_int8

# int8: int8 weights for small batches (decode, memory-bound) and the original
#   dense weights kept for large ones (prefill, batched decode, compute-bound):
#   1.5x the memory of bf16, the best of both speeds.
# int8-compact: int8 weights only; large batches dequantize on the fly.
QUANTIZATIONS = ("none", "int8", "int8-compact")


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, keep_dense: bool = False) -> None:
        super().__init__()
        q, scale = quantize_int8(linear.weight.data)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.bias = linear.bias
        self.dense = linear.weight.data if keep_dense else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense is not None and x.numel() // x.shape[-1] > INT8_KERNEL_MAX_ROWS:
            return torch.nn.functional.linear(x, self.dense, self.bias)
        return int8_linear(x, self.qweight, self.scale, self.bias)


def quantize_model(model: nn.Module, method: str, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace nn.Linear submodules in place; returns how many were replaced.

    The output head (an nn.Linear, or the embedding when tied) is read in full
    every decode step; on a small model it is a fifth of the bytes. It gets an
    int8 copy in `model.quantized_head`, which compute_logits prefers, while
    the embedding lookup keeps its full-precision rows."""
    if method == "none":
        return 0
    if method not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {method!r}; choose one of {QUANTIZATIONS}")
    keep = method == "int8"
    targets = [
        (name, mod) for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and not any(s in name for s in skip)
    ]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(mod, keep_dense=keep))
    head = getattr(model, "lm_head", None)
    if head is None and isinstance(getattr(model, "embed_tokens", None), nn.Embedding):
        weight = model.embed_tokens.weight
        head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        head.weight = weight
    if isinstance(head, nn.Linear) and hasattr(model, "compute_logits"):
        model.quantized_head = Int8Linear(head, keep_dense=keep)
    return len(targets)
