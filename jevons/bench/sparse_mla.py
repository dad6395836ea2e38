"""DeepSeek-V3.2's sparse MLA decode on the CPU: the C kernel
(kernels/cpu/sparse_mla.py) against the torch path, side by side in one run.

    python -m jevons.bench.sparse_mla [--contexts 4096 16384] [--heads 16 128] [--dtypes bfloat16 float32]
                                      [--threads 1] [--fp8-keys]

For each (dtype, context, heads) one decode row of a V3.2-shaped layer (R 512,
Dr 64, Dn 128, Dv 128; indexer 64 heads x 128; top-k 2,048) through
`sparse_mla_attention` with each backend's scoring and decode ops (the
top-k selection is torch in both), and the decode op alone over the same
selection. Prints the best of --iters calls in ms and
the torch / C ratio; on a shared machine only the ratios mean anything.
"""
from __future__ import annotations

import argparse
import time

import torch

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.kernels.cpu import dsa_index
from jevons.kernels.cpu import sparse_mla as cpu
from jevons.kernels.torch_ref.index_keys import FP8Keys
from jevons.kernels.torch_ref import sparse_mla as ref

R, DR, DN, DV, HI, DI, TOPK, BLOCK = 512, 64, 128, 128, 64, 128, 2048, 64


def best_ms(fn, iters: int) -> float:
    """The fastest of `iters` calls: on a shared machine the least disturbed one."""
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def case(ctx: int, heads: int, dtype: torch.dtype, fp8: FP8Keys | None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    blocks = -(-ctx // BLOCK)
    table = torch.randperm(blocks + 8, generator=g)[:blocks][None]  # scattered blocks
    kv = torch.randn(blocks + 8, BLOCK, R + DR, generator=g).to(dtype)
    keys = torch.zeros(blocks + 8, BLOCK, fp8.entry_elems(dtype) if fp8 else DI, dtype=dtype)
    slots = torch.arange((blocks + 8) * BLOCK)
    ref.write_index_keys(keys, torch.randn(len(slots), DI, generator=g), slots, fp8)
    meta = AttentionMetadata.build([1], [ctx - 1], table, BLOCK)
    qn = torch.randn(1, heads, DN, generator=g).to(dtype)
    qr = torch.randn(1, heads, DR, generator=g).to(dtype)
    iq = torch.randn(1, HI, DI, generator=g).to(dtype)
    iw = torch.randn(1, HI, generator=g)
    w = (torch.randn(heads, DN + DV, R, generator=g) / R**0.5).to(dtype)
    return kv, keys, meta, qn, qr, iq, iw, w


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--heads", type=int, nargs="+", default=[16, 128])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--fp8-keys", action="store_true", help="indexer keys in FP8, as an FP8 checkpoint caches them")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and kernel threads (default: torch's); 1 keeps OpenMP barriers out of a busy machine")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, C path {cpu.simd_path()}, top-k {TOPK}")
    print(f"{'dtype':9s} {'ctx':>6s} {'H':>4s} | {'layer torch':>11s} {'layer C':>8s} {'ratio':>6s} | "
          f"{'decode torch':>12s} {'decode C':>9s} {'ratio':>6s}")
    for dt_name in args.dtypes:
        dtype = getattr(torch, dt_name)
        for ctx in args.contexts:
            for heads in args.heads:
                fp8 = FP8Keys(DI, pow2_scales=True) if args.fp8_keys else None
                kv, keys, meta, qn, qr, iq, iw, w = case(ctx, heads, dtype, fp8)

                def layer(decode, scores):
                    return lambda: ref.sparse_mla_attention(qn, qr, kv, iq, iw, keys, meta, w, 0.07, 0.09, TOPK,
                                                            decode=decode, key_fp8=fp8, decode_scores=scores)

                lt, lc = (best_ms(layer(*ops), args.iters) for ops in (
                    (ref.sparse_mla_decode, ref.index_scores_decode), (cpu.sparse_mla_decode, dsa_index.index_scores_decode)))
                pos = torch.randperm(ctx)[:TOPK].sort().values[None]
                tables, lens = meta.block_tables, torch.tensor([min(ctx, TOPK)])

                def decode(fn):
                    return lambda: fn(qn, qr, kv, tables, pos, lens, w, 0.07)

                dt_, dc = (best_ms(decode(f), args.iters) for f in (ref.sparse_mla_decode, cpu.sparse_mla_decode))
                print(f"{dt_name:9s} {ctx:6d} {heads:4d} | {lt:11.1f} {lc:8.1f} {lt / lc:6.1f} | "
                      f"{dt_:12.1f} {dc:9.1f} {dt_ / dc:6.1f}", flush=True)


if __name__ == "__main__":
    main()
