"""A checkpoint: a Hugging Face-style config plus a stream of named weights.

Both on-disk formats (safetensors folders and GGUF files) present the same face,
so a model only ever sees Hugging Face parameter names and config keys. Weights
are yielded one tensor at a time so that loading never holds more than the
model itself plus one tensor in flight.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch


# Floating dtypes we convert to the requested dtype. Anything else (float8,
# integer, bool) is a quantized payload or an index and passes through as is.
_CONVERTIBLE = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})

# Companion scale tensors of quantized weights (DeepSeek FP8 `weight_scale_inv`,
# compressed-tensors `weight_scale`/`input_scale`). They stay in their source
# precision: rounding a block scale to bf16 would shift every weight it scales.
_SCALE_SUFFIXES = ("_scale_inv", ".weight_scale", ".input_scale")
# DeepSeek-V3's router bias decides expert selection by small margins; like
# transformers, keep it in its source precision even in a bf16 run.
_KEEP_PRECISION_SUFFIXES = (".e_score_correction_bias",)


def is_scale_tensor(name: str) -> bool:
    return name.endswith(_SCALE_SUFFIXES)


def convert_for_load(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast a floating weight to `dtype`; leave quantized payloads and scales alone."""
    if tensor.dtype not in _CONVERTIBLE or is_scale_tensor(name) or name.endswith(_KEEP_PRECISION_SUFFIXES):
        return tensor
    return tensor.to(dtype)


class Checkpoint(ABC):
    """Config and weights of one model, in Hugging Face naming."""

    config: dict[str, Any]

    @abstractmethod
    def tensor_names(self) -> list[str]:
        """Hugging Face names of every tensor `iter_weights` will yield, in order."""

    @abstractmethod
    def iter_weights(self, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield `(name, tensor)` one at a time, floating tensors cast to `dtype`."""

    def quantized_levels(self, name: str) -> Any:
        """A weight's stored quantization levels (loader/gguf_quant.QuantLevels)
        when the file holds them on a grid jevons's kernels take as they are;
        None for float checkpoints."""
        return None

    def stored_bits(self) -> int | None:
        """Bits per weight most layer matmul weights are stored in when the
        file is quantized (4 for a Q4 GGUF), None for float checkpoints."""
        return None

