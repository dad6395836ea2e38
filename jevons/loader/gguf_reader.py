"""Low-level GGUF access: metadata as a plain dict, tensors dequantized one at a time.

GGUF (llama.cpp's format) stores a tensor's dims innermost-first (ggml's ne0 is
the row length), the reverse of torch. The file is memory-mapped
(gguf_header.py), so a tensor's bytes are only read when it is dequantized.
"""
from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType

from jevons.loader.gguf_dequant import dequantize
from jevons.loader.gguf_header import TensorView, read_gguf

Q = GGMLQuantizationType

# Types the tests cover. Other block types that gguf.quants can read also load
# (through its slower numpy path); anything else gets a clear error.
TESTED_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
     Q.IQ4_NL}
)


class GGUFFile:
    """An open GGUF file: `metadata` (key -> python value) and `tensors` by name."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        metadata, tensors = read_gguf(str(self.path))
        self.metadata: dict[str, Any] = metadata
        self.tensors: dict[str, TensorView] = tensors

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "llama"))

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        """`{architecture}.{suffix}`, e.g. arch_key("block_count") -> llama.block_count."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        """Torch-order shape (outermost first) of a stored tensor."""
        return tuple(int(d) for d in reversed(self.tensors[name].shape.tolist()))

    def read(self, name: str) -> torch.Tensor:
        return dequantize_tensor(self.tensors[name])


@functools.lru_cache(maxsize=2)
def _open_cached(path: str, mtime_ns: int, size: int) -> GGUFFile:
    return GGUFFile(pathlib.Path(path))


def open_gguf(path: pathlib.Path | str) -> GGUFFile:
    """Open a GGUF, reusing a recent parse: the checkpoint and the tokenizer both
    read the same file, and parsing metadata takes seconds on large vocabularies.
    The key includes mtime and size so a rewritten file is parsed again."""
    st = os.stat(path)
    return _open_cached(str(pathlib.Path(path).resolve()), st.st_mtime_ns, st.st_size)


def dequantize_tensor(t: TensorView) -> torch.Tensor:
    """One tensor as torch: F32/F16/BF16 exactly in their own dtype, block-quantized
    types dequantized to float32. The result owns its memory (not the mmap)."""
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    kind = t.tensor_type
    data = t.data
    if kind == Q.F32 or kind == Q.F16:
        # np.array copies out of the read-only memory map; torch wants writable memory.
        return torch.from_numpy(np.array(data)).reshape(shape)
    if kind == Q.BF16:
        # Stored as raw bytes; reinterpret as 16-bit words, then as bfloat16, no rounding.
        words = np.array(data).view(np.uint16)
        return torch.from_numpy(words).view(torch.bfloat16).reshape(shape)
    try:
        return dequantize(data, kind, shape)
    except NotImplementedError as exc:
        raise NotImplementedError(
            f"GGUF tensor {t.name!r} has type {kind.name}, which jevons cannot dequantize; "
            f"re-quantize the model to one of {sorted(q.name for q in TESTED_TYPES)}"
        ) from exc
