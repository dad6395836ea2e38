"""Looking up a C kernel by name and dtype, with its ctypes signature set once."""
from __future__ import annotations

import ctypes
import functools
from typing import Callable

import torch

from jevons.kernels.cpu.build import load

# C argument kinds, short so signatures read like the C prototypes.
P, L, I, F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}


@functools.cache
def kernel(name: str, dtype: torch.dtype, argtypes: tuple, restype=None) -> Callable[..., int] | None:
    """`jv_<name>_<f32|bf16>` from the library, or None when the library is
    not built or has no variant for this dtype."""
    lib = load()
    suffix = SUFFIX.get(dtype)
    if lib is None or suffix is None:
        return None
    fn = getattr(lib, f"jv_{name}_{suffix}")
    fn.argtypes, fn.restype = list(argtypes), restype
    return fn
