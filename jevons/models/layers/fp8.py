"""Block-scaled FP8 weights as DeepSeek ships them.

A weight [N, K] is stored as float8_e4m3fn plus `weight_scale_inv`
[ceil(N/bn), ceil(K/bk)] in float32: the real weight is the FP8 value times the
scale of its (bn x bk) block. The CPU path dequantizes once at load; the scales
are kept beside the dequantized weight so that a GPU backend can requantize
exactly (or load the FP8 payload again) and run FP8 GEMMs later.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from jevons.kernels.torch_ref.fp8 import DEFAULT_BLOCK, dequant_block_fp8  # noqa: F401 (the reference lives with the kernels)

FP8_DTYPES = frozenset({torch.float8_e4m3fn, torch.float8_e5m2})
SCALE_SUFFIX = "_scale_inv"  # "x.weight_scale_inv" scales "x.weight"


def block_size_from_config(hf: dict) -> tuple[int, int]:
    """The (rows, cols) block of a checkpoint's quantization_config."""
    q = hf.get("quantization_config") or {}
    bs = q.get("weight_block_size") or DEFAULT_BLOCK
    return int(bs[0]), int(bs[1])


def pair_fp8_weights(
    weights: Iterable[tuple[str, torch.Tensor]], block: tuple[int, int]
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """Yield (name, tensor, scale_inv or None) with FP8 weights already dequantized.

    A weight and its scale may arrive in either order (and from different
    shards), so whichever comes first waits here for its partner; everything
    else streams straight through."""
    waiting_w: dict[str, torch.Tensor] = {}
    waiting_s: dict[str, torch.Tensor] = {}
    for name, t in weights:
        if name.endswith(SCALE_SUFFIX):
            base = name[: -len(SCALE_SUFFIX)]
            if base in waiting_w:
                yield base, dequant_block_fp8(waiting_w.pop(base), t, block), t
            else:
                waiting_s[base] = t
        elif t.dtype in FP8_DTYPES:
            if name in waiting_s:
                s = waiting_s.pop(name)
                yield name, dequant_block_fp8(t, s, block), s
            else:
                waiting_w[name] = t
        else:
            yield name, t, None
    if waiting_w or waiting_s:
        lone = sorted(waiting_w) + [n + SCALE_SUFFIX for n in sorted(waiting_s)]
        raise ValueError(f"FP8 weights and scales that never met their partner: {lone[:5]}")
