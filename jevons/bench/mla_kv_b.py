"""MLA decode with kv_b_proj in float vs in 8 bits (models/layers/mla_kv_b.py),
the same loaded model, rounds interleaved in one process:

    python -m jevons.bench.mla_kv_b MODEL [-q int4] [--threads 1 2] [--batch 1] [--steps 32] [--rounds 3]

"float" swaps each MLA layer's int8 rows back for an nn.Linear holding their
dequantization in the model's dtype (the bytes the decode kernel read before,
[H * (Dn + Dv), R] floats a layer); "int8" puts the rows back. Per round and
mode: greedy batch-B decode steps after a short prompt; prints ms a decode
step and the C MLA kernel's ms a call (timed around each call of
kernels/cpu/sparse_mla.py), best of the rounds, and the int8 / float ratios.
On a shared machine compare the two columns of one run, not runs.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("-q", "--quantization", default="int4")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from jevons import LLM, SamplingParams
    from jevons.kernels import registry
    from jevons.kernels.cpu import sparse_mla
    from jevons.models.layers.mla import MLAttention
    from jevons.models.layers.mla_kv_b import Int8KvB

    llm = LLM(args.model, dtype=args.dtype, quantization=args.quantization, progress=False)
    layers = [m for m in llm.engine.runner.model.modules() if isinstance(m, MLAttention)]
    if not layers or not all(isinstance(m.kv_b_proj, Int8KvB) for m in layers):
        raise SystemExit("no MLA layer with an int8 kv_b_proj (a quantized DeepSeek model on the CPU?)")
    rows = [m.kv_b_proj for m in layers]
    floats = []
    for r in rows:
        lin = nn.Linear(r.in_features, r.out_features, bias=False, device="meta")
        lin.weight = nn.Parameter(r.dequantized(), requires_grad=False)
        floats.append(lin)

    kernel_s: list[float] = []
    real = sparse_mla.sparse_mla_decode

    def timed(*a: Any, **k: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            kernel_s.append(time.perf_counter() - t0)

    sparse_mla.sparse_mla_decode = timed
    registry._ops.cache_clear()  # the ops pick up the wrapped function
    registry._by_device.clear()

    prompts = [{"prompt_token_ids": list(range(100 + i, 108 + i))} for i in range(args.batch)]
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    many = SamplingParams(temperature=0, max_tokens=args.steps + 1, ignore_eos=True)
    mb = sum(r.qweight.numel() + 4 * r.scale.numel() for r in rows) / 1e6
    mb_float = sum(f.weight.numel() * f.weight.element_size() for f in floats) / 1e6
    print(f"{len(layers)} MLA layers; kv_b bytes a step: float {mb_float:.1f} MB, int8 {mb:.1f} MB")
    for threads in args.threads:
        torch.set_num_threads(threads)
        best: dict[str, list[float]] = {"float": [1e9, 1e9], "int8": [1e9, 1e9]}
        for _ in range(args.rounds):
            for mode in ("float", "int8"):
                for m, r, f in zip(layers, rows, floats):
                    m.kv_b_proj = f if mode == "float" else r
                llm.generate(prompts, one, use_tqdm=False)  # warm
                t0 = time.perf_counter()
                llm.generate(prompts, one, use_tqdm=False)
                t1 = time.perf_counter()
                kernel_s.clear()
                llm.generate(prompts, many, use_tqdm=False)
                t2 = time.perf_counter()
                step = ((t2 - t1) - (t1 - t0)) / args.steps
                calls = kernel_s[len(layers):]  # the prompt's step makes no kernel call; skip the first step's
                call = sum(calls) / max(len(calls), 1)
                best[mode] = [min(best[mode][0], step), min(best[mode][1], call)]
        (fs, fk), (qs, qk) = best["float"], best["int8"]
        print(f"threads {threads} batch {args.batch}: decode step float {fs * 1e3:.2f} ms, int8 {qs * 1e3:.2f} ms "
              f"({qs / fs:.3f}x time); MLA kernel a layer float {fk * 1e3:.3f} ms, int8 {qk * 1e3:.3f} ms "
              f"({qk / fk:.3f}x time)")
    for m, r in zip(layers, rows):
        m.kv_b_proj = r


if __name__ == "__main__":
    main()
