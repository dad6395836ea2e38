"""Linear layers with the weight formats jevons serves.

Models are written with plain nn.Linear; after loading, `quantize_model`
swaps them for a quantized variant in place, so every architecture gets every
format without its own code."""
from __future__ import annotations

import torch
from torch import nn

from jevons.kernels.torch_ref.int8_linear import int8_linear, quantize_int8

QUANTIZATIONS = ("none", "int8")


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        q, scale = quantize_int8(linear.weight.data)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.qweight, self.scale, self.bias)


def quantize_model(model: nn.Module, method: str, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace nn.Linear submodules in place; returns how many were replaced.
    The output head is skipped by default: its errors land directly on the
    logits, and when it is tied to the embedding it is not an nn.Linear."""
    if method == "none":
        return 0
    if method != "int8":
        raise ValueError(f"unknown quantization {method!r}; choose one of {QUANTIZATIONS}")
    targets = [
        (name, mod) for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and not any(s in name for s in skip)
    ]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(mod))
    return len(targets)
