"""Shared helpers for the Triton kernels."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, where kernels run as numpy on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """The element type operands are cast to before tl.dot.

    On a GPU that is the storage type itself (bf16/fp16 tensor cores). The
    interpreter keeps bf16 as raw uint16 bits and does arithmetic on them, so
    there bf16 operands are widened to fp32 first; fp16 and fp32 work as they are.
    """
    if dtype == torch.bfloat16:
        return tl.float32 if interpreting() else tl.bfloat16
    if dtype == torch.float16:
        return tl.float16
    return tl.float32


def pow2(n: int, floor: int = 1) -> int:
    """Next power of two >= max(n, floor): tl.arange needs power-of-two
    extents, and every tl.dot dimension must be >= 16 on a GPU (floor=16)."""
    return max(triton.next_power_of_2(max(int(n), 1)), floor)


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors on a CUDA device; a small stand-in elsewhere,
    so split heuristics stay tiny (and fast) under the interpreter."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4
