"""DeepSeek V2/V3's MLA decode on the CPU: the C absorbed-decode kernel
(kernels/cpu/sparse_mla.py with no selection) against the torch path, side by
side in one run.

    python -m jevons.bench.mla_decode [--contexts 1024 4096] [--heads 16 128] [--dtypes bfloat16 float32]
                                      [--threads 1] [--iters 3]

For each (dtype, context, heads) one decode row of an MLA layer (R 512, Dr 64,
Dn 128, Dv 128; V2-Lite has 16 heads, V3 128; V2-Lite's query projection,
q_lora_rank 1,536 at 128 heads as V3) over a cache of `context` tokens in
scattered 64-token blocks:
- "attn": the attention alone, torch's `mla_attention` (gather + absorbed
  einsums) vs the C op;
- "layer": MLAttention.forward, projections included, with the torch backend
  vs the CPU backend (which sends decode rows to the C op).
Prints the best of --iters calls in ms and the torch / C ratio; on a shared
machine only the ratios mean anything.
"""
from __future__ import annotations

import argparse

import torch

from jevons import runtime
from jevons.bench.sparse_mla import best_ms
from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.kernels.cpu import sparse_mla as cpu
from jevons.kernels.torch_ref import mla_attention as ref
from jevons.models.forward_context import ForwardContext
from jevons.models.layers.mla import MLAConfig, MLAttention
from jevons.models.layers.rotary import RotaryEmbedding

R, DR, DN, DV, BLOCK, HIDDEN = 512, 64, 128, 128, 64, 2048


def layer_for(heads: int, ctx: int, dtype: torch.dtype) -> MLAttention:
    c = MLAConfig(hidden=HIDDEN, num_heads=heads, q_lora_rank=None if heads <= 16 else 1536, kv_lora_rank=R,
                  qk_nope_head_dim=DN, qk_rope_head_dim=DR, v_head_dim=DV, bias=False, rope_interleave=True,
                  scale=(DN + DR) ** -0.5)
    torch.manual_seed(0)
    layer = MLAttention(c, 0, RotaryEmbedding(DR, ctx + 8, 10000.0, None))
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=p.shape[-1] ** -0.5)
    return layer.to(dtype).eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--heads", type=int, nargs="+", default=[16, 128])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch and kernel threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, C path {cpu.simd_path()}")
    print(f"{'dtype':9s} {'ctx':>6s} {'H':>4s} | {'attn torch':>10s} {'attn C':>7s} {'ratio':>6s} | "
          f"{'layer torch':>11s} {'layer C':>8s} {'ratio':>6s}")
    try:
        for dt_name in args.dtypes:
            dtype = getattr(torch, dt_name)
            for ctx in args.contexts:
                for heads in args.heads:
                    g = torch.Generator().manual_seed(0)
                    blocks = -(-ctx // BLOCK)
                    table = torch.randperm(blocks + 8, generator=g)[:blocks][None]  # scattered blocks
                    kv = torch.randn(blocks + 8, BLOCK, R + DR, generator=g).to(dtype)
                    meta = AttentionMetadata.build([1], [ctx - 1], table, BLOCK)
                    qn = torch.randn(1, heads, DN, generator=g).to(dtype)
                    qr = torch.randn(1, heads, DR, generator=g).to(dtype)
                    w = (torch.randn(heads, DN + DV, R, generator=g) / R**0.5).to(dtype)
                    at = best_ms(lambda: ref.mla_attention(qn, qr, kv[0, :1], kv, meta, w, 0.07), args.iters)
                    ac = best_ms(lambda: cpu.sparse_mla_decode(qn, qr, kv, meta.block_tables, None, meta.seq_lens,
                                                               w, 0.07), args.iters)
                    layer = layer_for(heads, ctx, dtype)
                    x = torch.randn(1, HIDDEN, generator=g).to(dtype)
                    fwd = ForwardContext(attn=meta, kv_caches=[(kv, kv[:0])])
                    pos = torch.tensor([ctx - 1])
                    times = []
                    for backend in ("torch", "cpu"):
                        runtime.configure(runtime.RuntimeConfig(kernel_backend=backend))
                        with torch.no_grad():
                            times.append(best_ms(lambda: layer(pos, x, fwd), args.iters))
                    lt, lc = times
                    print(f"{dt_name:9s} {ctx:6d} {heads:4d} | {at:10.1f} {ac:7.1f} {at / ac:6.1f} | "
                          f"{lt:11.1f} {lc:8.1f} {lt / lc:6.1f}", flush=True)
    finally:
        runtime.reset()


if __name__ == "__main__":
    main()
