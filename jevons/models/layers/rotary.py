"""Rotary position embeddings with the scaling variants Llama-family checkpoints
use: default, linear, llama3 and YaRN. The inverse-frequency formulas follow the
published definitions so that positions land exactly where transformers puts them."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from jevons.kernels.torch_ref.rotary import apply_rotary, rotate_half  # noqa: F401 (the reference lives with the kernels)


def _default_inv_freq(dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    factor = float(s["factor"])
    low_ff = float(s.get("low_freq_factor", 1.0))
    high_ff = float(s.get("high_freq_factor", 4.0))
    old_len = float(s.get("original_max_position_embeddings", 8192))
    low_wavelen = old_len / low_ff
    high_wavelen = old_len / high_ff
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature correction; DeepSeek also applies its square
    to the softmax scale."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _yarn_inv_freq(dim: int, base: float, s: dict[str, Any], max_pos: int) -> tuple[torch.Tensor, float]:
    factor = float(s.get("factor") or max_pos / s["original_max_position_embeddings"])
    orig = float(s.get("original_max_position_embeddings") or max_pos)
    attn_factor = s.get("attention_factor")
    mscale, mscale_all = s.get("mscale"), s.get("mscale_all_dim")
    if attn_factor is None:
        if mscale and mscale_all:
            attn_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all)
        else:
            attn_factor = yarn_mscale(factor)
    beta_fast = float(s.get("beta_fast") or 32)
    beta_slow = float(s.get("beta_slow") or 1)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv, float(attn_factor)


def rope_inv_freq(
    dim: int, base: float, scaling: dict[str, Any] | None, max_pos: int
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and the cos/sin multiplier for a rope_scaling dict."""
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    with torch.device("cpu"):
        return _rope_inv_freq(kind, dim, base, scaling, max_pos)


def _rope_inv_freq(
    kind: str, dim: int, base: float, scaling: dict[str, Any] | None, max_pos: int
) -> tuple[torch.Tensor, float]:
    if kind == "default" or scaling is None:
        return _default_inv_freq(dim, base), 1.0
    if kind == "linear":
        return _default_inv_freq(dim, base) / float(scaling["factor"]), 1.0
    if kind == "llama3":
        return _llama3_inv_freq(_default_inv_freq(dim, base), scaling), 1.0
    if kind == "yarn":
        return _yarn_inv_freq(dim, base, scaling, max_pos)
    raise NotImplementedError(f"rope scaling type {kind!r} is not supported")


class RotaryEmbedding(nn.Module):
    """cos/sin of every position's angles; a forward gets its positions' rows.

    On the CPU the rows are computed for the step's positions (the same
    float32 products and the same vectorized cos/sin as the whole table, so
    the same values: tested), and the table over all `max_pos` positions is
    built only if something reads `cos`/`sin` itself (MLA's C glue): for a
    131k-position model it cost 0.3-0.6 s of start-up and 64 MB. Elsewhere
    the table is computed on the CPU and moved with `to_device`, as before.
    The tables are plain attributes, not buffers: models are built on the
    meta device and materialized with to_empty(), which would wipe buffers."""

    def __init__(self, dim: int, max_pos: int, base: float, scaling: dict[str, Any] | None) -> None:
        super().__init__()
        inv_freq, self.mult = rope_inv_freq(dim, base, scaling, max_pos)
        self.inv_freq = inv_freq.to("cpu")
        self.max_pos = max_pos
        self._device = torch.device("cpu")
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def _rows(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows for float32 positions t (CPU)."""
        freqs = torch.outer(t, self.inv_freq)
        # cos/sin of each half once, then doubled: the same values as of the doubled angles, at half the work
        cos, sin = freqs.cos(), freqs.sin()
        if self.mult != 1.0:
            cos.mul_(self.mult)
            sin.mul_(self.mult)
        return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)

    def _table(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tables is None:
            cos, sin = self._rows(torch.arange(self.max_pos, dtype=torch.float32, device="cpu"))
            self._tables = (cos.to(self._device), sin.to(self._device))
        return self._tables

    @property
    def cos(self) -> torch.Tensor:
        return self._table()[0]

    @property
    def sin(self) -> torch.Tensor:
        return self._table()[1]

    def to_device(self, device: torch.device | str) -> None:
        self._device = torch.device(device)
        if self._tables is not None or self._device.type != "cpu":
            cos, sin = self._table()
            self._tables = (cos.to(self._device), sin.to(self._device))

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows for this step's positions, [N, 1, D]: made once per
        forward and shared by every layer."""
        if self._tables is None and positions.device.type == "cpu":
            cos, sin = self._rows(positions.to(torch.float32))
            return cos.unsqueeze(1).to(dtype), sin.unsqueeze(1).to(dtype)
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [N, Hq, D], k: [N, Hk, D] in rotate-half layout."""
        return apply_rotary(q, k, *self.lookup(positions, q.dtype))

