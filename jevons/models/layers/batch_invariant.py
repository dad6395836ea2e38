"""Batch-invariant linears for the deterministic mode (`--deterministic`).

A GEMM library picks its kernel, blocking and reduction order from the
problem's shape, so row r of `x @ W^T` can change in its last bits when the
batch around it grows from 1 row to 30 (measured here: MKL's fp32 GEMM gives
a single row different bits than the same row inside a batch of 4 or more).
That is how a request's answer came to depend on what other clients sent.

`RowTiled` calls its layer on tiles of exactly `tile` rows, zero-padding the
last one: every call has the same shape, so the library takes the same path
every time, and a row's result is a function of that row alone. At load,
`make_batch_invariant` probes each distinct layer: the same row must come
out bitwise equal at every position of a tile and beside any other rows;
a layer that fails runs one row per call (always invariant, slower).

jevons's qgemm layers need none of this: per-row int8 activations and
integer dot products make every row independent by construction."""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger("jevons")

# Rows per call. 16 keeps decode at batch 1 near its memory-bound cost (16
# rows of compute per pass over the weights) while prefill still runs GEMMs.
DEFAULT_TILE = 16


class RowTiled(nn.Module):
    """`inner(x)` computed in fixed tiles of `tile` rows."""

    def __init__(self, inner: nn.Module, tile: int = DEFAULT_TILE) -> None:
        super().__init__()
        self.inner = inner
        self.tile = tile
        self.in_features = getattr(inner, "in_features", None)
        self.out_features = getattr(inner, "out_features", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = x.shape[-1]
        x2 = x.reshape(-1, k)
        rows, t = x2.shape[0], self.tile
        padded = -(-rows // t) * t
        if padded != rows:
            x2 = torch.cat((x2, x2.new_zeros(padded - rows, k)))
        y = torch.cat([self.inner(x2[s : s + t]) for s in range(0, padded, t)])
        return y[:rows].reshape(*x.shape[:-1], y.shape[-1])


def _is_invariant(layer: nn.Module, tile: int, dtype: torch.dtype, k: int) -> bool:
    """Row 0 of a random batch, alone and at every position of a tile beside
    other random rows, gives the same bits."""
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(tile + 1, k, generator=g).to(dtype)
    with torch.inference_mode():
        want = layer(probe[:1].expand(tile, k).contiguous())[0]
        for pos in range(tile):
            batch = probe[1:].clone()
            batch[pos] = probe[0]
            if not torch.equal(layer(batch)[pos], want):
                return False
    return True


def _needs_tiling(mod: nn.Module) -> bool:
    from jevons.models.layers.linear import Int4Linear, Int8Linear
    from jevons.models.layers.packed_linear import PackedLinear

    if isinstance(mod, (Int4Linear, Int8Linear)):
        return mod.qw is None  # qgemm is row-independent already
    return type(mod) in (nn.Linear, PackedLinear)


def make_batch_invariant(model: nn.Module, dtype: torch.dtype, tile: int = DEFAULT_TILE) -> int:
    """Wrap every linear of `model` (and its fast_head) that is not row-
    independent by construction in RowTiled; returns how many were wrapped.
    Layers read directly by their owner (MLA's kv_b_proj) are left alone."""
    from jevons.models.layers.linear import output_head

    if getattr(model, "fast_head", None) is None and output_head(model) is not None:
        model.fast_head = output_head(model)  # so the head is a module to wrap, too
    done: dict[int, nn.Module] = {}
    probed: dict[tuple[type, int, int], int] = {}
    for parent in list(model.modules()):
        if isinstance(parent, RowTiled):
            continue
        for name, child in list(parent.named_children()):
            if name == "kv_b_proj" or not _needs_tiling(child):
                continue
            if id(child) not in done:
                k, n = child.in_features, child.out_features
                key = (type(child), k, n)
                if key not in probed:
                    probed[key] = tile if _is_invariant(child, tile, dtype, k) else 1
                    if probed[key] == 1:
                        log.warning("deterministic: %s %dx%d is not row-invariant in tiles of %d; one row per call",
                                    type(child).__name__, n, k, tile)
                done[id(child)] = RowTiled(child, probed[key])
            setattr(parent, name, done[id(child)])
    return len(done)
