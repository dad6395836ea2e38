"""How much int8 rounding adds to MLA's kv_b, one scale a row vs one per 32
values (models/layers/mla_kv_b.py keeps one a row), on a DeepSeek GGUF's own
kv_b (split attn_k_b / attn_v_b, dequantized) and on a heavy-tailed stand-in
with outlier columns; the 4-bit Q4_0-like rounding of the stand-in for scale:

    python -m jevons.bench.kv_b_rounding FILE.gguf [--layers 4]

Prints the relative RMS error ||W' - W|| / ||W|| per layer.
"""
from __future__ import annotations

import argparse

import torch


def per_row(w: torch.Tensor) -> torch.Tensor:
    s = w.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127
    return (w / s).round().clamp(-127, 127) * s


def per_group(w: torch.Tensor, g: int = 32, low: int = -127, high: int = 127) -> torch.Tensor:
    """Symmetric rounding to [low, high] with a scale a group of g: amax / -low."""
    v = w.view(*w.shape[:-1], -1, g)
    s = v.abs().amax(-1, keepdim=True).clamp(min=1e-12) / -low
    return ((v / s).round().clamp(low, high) * s).view_as(w)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    from gguf import GGUFReader
    from gguf.quants import dequantize

    tensors = {t.name: t for t in GGUFReader(args.gguf).tensors}

    def read(name: str) -> torch.Tensor:
        t = tensors[name]
        return torch.from_numpy(dequantize(t.data, t.tensor_type)).float()

    for layer in range(args.layers):
        k_b, v_b = read(f"blk.{layer}.attn_k_b.weight"), read(f"blk.{layer}.attn_v_b.weight")  # [H, R, Dn], [H, Dv, R]
        w = torch.cat([k_b.transpose(1, 2), v_b], 1)  # kv_b_proj as [H, Dn + Dv, R]
        print(f"layer {layer}: int8 per row {rel(per_row(w), w):.5f}, per 32 {rel(per_group(w), w):.5f}")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 256, 512, generator=g) * torch.exp(0.5 * torch.randn(16, 256, 512, generator=g))
    w[..., :4] *= 8  # a few outlier columns
    print(f"heavy-tailed stand-in: int8 per row {rel(per_row(w), w):.5f}, per 32 {rel(per_group(w), w):.5f}, "
          f"4-bit per 32 (Q4_0-like) {rel(per_group(w, 32, -8, 7), w):.5f}")


if __name__ == "__main__":
    main()
