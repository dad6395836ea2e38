"""One DeepSeek MoE layer's routed experts, side by side in one process:
the fused qgemm kernel (models/layers/moe_qgemm.py), Int4Experts
(models/layers/moe_int4.py, in float32 its exact dense dequantization; in
bfloat16 PyTorch's int4 kernel) and the float reference
(kernels/torch_ref/moe.fused_experts), at V2-Lite's shape by default.

    python -m jevons.bench.moe_kernel --tokens 1 32 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def _time(fn, reps: int) -> float:
    fn()  # warm-up (and first-touch of scratch)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> None:
    from jevons.kernels.torch_ref.moe import fused_experts
    from jevons.kernels.torch_ref.moe_routing import RouterConfig, select_experts
    from jevons.models.layers.moe_int4 import Int4Experts
    from jevons.models.layers.moe_qgemm import QgemmExperts

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=1408)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=6)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--bf16", action="store_true", help="also Int4Experts on bfloat16 (PyTorch's int4 kernel)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    w13 = torch.randn(a.experts, 2 * a.inter, a.hidden, generator=g) * 0.02
    w2 = torch.randn(a.experts, a.hidden, a.inter, generator=g) * 0.02
    fused = QgemmExperts.from_float(w13, w2)
    int4 = Int4Experts(w13, w2)
    router = RouterConfig(num_experts=a.experts, top_k=a.top_k)
    print(f"E={a.experts} H={a.hidden} I={a.inter} top-{a.top_k}, {a.threads} threads, median of {a.reps}, ms")
    print(f"{'tokens':>6} {'fused qgemm':>12} {'Int4Experts':>12} {'float ref':>10}"
          + (f" {'int4 bf16':>10}" if a.bf16 else "") + "   float/fused  int4/fused")
    for t in a.tokens:
        x = torch.randn(t, a.hidden, generator=g)
        weights, ids = select_experts(torch.randn(t, a.experts, generator=g), router)
        with torch.no_grad():
            ms_fused = _time(lambda: fused(x, weights, ids), a.reps)
            ms_int4 = _time(lambda: int4(x, weights, ids), a.reps)
            ms_ref = _time(lambda: fused_experts(x, w13, w2, weights, ids), a.reps)
            extra = ""
            if a.bf16:
                xb = x.bfloat16()
                extra = f" {_time(lambda: int4(xb, weights, ids), a.reps):10.2f}"
        print(f"{t:>6} {ms_fused:12.2f} {ms_int4:12.2f} {ms_ref:10.2f}{extra}"
              f"   {ms_ref / ms_fused:10.2f}x {ms_int4 / ms_fused:10.2f}x")


if __name__ == "__main__":
    main()
