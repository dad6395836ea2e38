"""DeepSeek-V3.2's indexer key cache in FP8: each token's key as e4m3 with one
float32 scale per block of 128 dims, as DeepSeek's own inference, vLLM and
SGLang store it for the FP8 checkpoints (132 bytes per token per layer at
index_head_dim 128, instead of 256 in bf16).

Entry layout, per token, in the layer's indexer-key tensor (whatever its
dtype: the bytes are reinterpreted): [Di e4m3 bytes | nb float32 scales |
padding to the cache dtype's element size]. The cache tiers copy blocks as
bytes, so they carry it unchanged.

Quantization (DeepSeek's act_quant): per block, s = max(|x|, 1e-4) / 448,
rounded up to a power of two under the ue8m0 scale format; q = e4m3(x / s).
Scoring dequantizes (q * s, exact in float32 for power-of-two scales) and
scores as for unquantized keys. Before quantizing, DeepSeek rotates queries
and keys by the same normalized Hadamard matrix: dot products are unchanged,
while outlying dimensions are spread over the block, so the block's scale
fits every value better (models/layers/dsa_indexer.py applies it).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

E4M3_MAX = 448.0
SCALE_FLOOR = 1e-4  # DeepSeek's clamp on the block maximum: an all-zero block still has a scale


@dataclass(frozen=True)
class FP8Keys:
    head_dim: int
    block: int = 128  # dims per scale (DeepSeek's quantization block); a shorter key is one block
    pow2_scales: bool = False  # the ue8m0 scale format: scales rounded up to powers of two

    def __post_init__(self) -> None:
        if self.head_dim % self.dims_per_scale:
            raise ValueError(f"index_head_dim {self.head_dim} is not a whole number of {self.block}-dim blocks")

    @property
    def dims_per_scale(self) -> int:
        return min(self.block, self.head_dim)

    @property
    def scales(self) -> int:
        return self.head_dim // self.dims_per_scale

    @property
    def entry_bytes(self) -> int:
        return self.head_dim + 4 * self.scales

    def entry_elems(self, dtype: torch.dtype) -> int:
        """The entry's size in elements of a cache tensor of `dtype` (rounded up)."""
        size = torch.empty(0, dtype=dtype).element_size()
        return -(-self.entry_bytes // size)


def quantize(keys: torch.Tensor, fmt: FP8Keys) -> torch.Tensor:
    """[N, Di] keys -> [N, entry_bytes] uint8 entries."""
    n, blk = keys.shape[0], fmt.dims_per_scale
    x = keys.float().view(n, fmt.scales, blk)
    s = x.abs().amax(-1, keepdim=True).clamp_min(SCALE_FLOOR) / E4M3_MAX
    if fmt.pow2_scales:
        s = torch.exp2(torch.ceil(torch.log2(s)))
    q = (x / s).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return torch.cat([q.view(n, fmt.head_dim).view(torch.uint8), s.view(n, fmt.scales).view(torch.uint8)], dim=-1)


def dequantize(entries: torch.Tensor, fmt: FP8Keys) -> torch.Tensor:
    """[..., >= entry_bytes] uint8 entries -> [..., Di] float32 keys."""
    lead, di = entries.shape[:-1], fmt.head_dim
    flat = entries.reshape(-1, entries.shape[-1])
    q = flat[:, :di].contiguous().view(torch.float8_e4m3fn).float().view(-1, fmt.scales, fmt.dims_per_scale)
    s = flat[:, di : fmt.entry_bytes].contiguous().view(torch.float32).view(-1, fmt.scales, 1)
    return (q * s).view(*lead, di)


def _bytes(key_cache: torch.Tensor) -> torch.Tensor:
    """The cache as [slots, entry bytes] uint8 (a view)."""
    return key_cache.view(-1, key_cache.shape[-1]).view(torch.uint8)


def write(key_cache: torch.Tensor, keys: torch.Tensor, slot_mapping: torch.Tensor, fmt: FP8Keys) -> None:
    """Quantize this step's [N, Di] keys into their cache slots."""
    flat = _bytes(key_cache)
    entries = quantize(keys, fmt)
    pad = flat.shape[-1] - entries.shape[-1]
    if pad:
        entries = torch.cat([entries, entries.new_zeros(entries.shape[0], pad)], dim=-1)
    flat.index_copy_(0, slot_mapping, entries)


def read(key_cache: torch.Tensor, slots: torch.Tensor, fmt: FP8Keys) -> torch.Tensor:
    """The keys at `slots` (any shape), dequantized: [*slots.shape, Di] float32."""
    return dequantize(_bytes(key_cache)[slots], fmt)


@functools.cache
def _hadamard(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Built once per size, device and dtype (every layer's forward asks)."""
    if n & (n - 1):
        raise ValueError(f"a Hadamard rotation needs a power-of-two size, not {n}")
    h = torch.ones(1, 1)
    while h.shape[0] < n:  # Sylvester's order, the fast Walsh-Hadamard transform's
        h = torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]]), h)
    return (h * n**-0.5).to(device=device, dtype=dtype)


def hadamard_rotate(x: torch.Tensor) -> torch.Tensor:
    """x @ H / sqrt(n) over the last dim (n a power of two): an orthogonal map,
    so (rotated q) . (rotated k) = q . k."""
    return x @ _hadamard(x.shape[-1], x.device, x.dtype)
