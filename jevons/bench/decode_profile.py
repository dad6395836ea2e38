"""Where a decode step's time goes: every C kernel call and every module's
forward wrapped with a timer, exclusive times per step (a kernel's time is
not its caller's), over greedy batch-B decode steps after a short prompt.

    python -m jevons.bench.decode_profile MODEL [-q int4] [--threads 1] [--batch 1] [--steps 33]

Prints ms a step per kernel (by its weight's shape for qgemm) and per module
class, then the sum of the kernels and the rest; the wrappers cost a few
microseconds a call themselves, so the totals run above an unwrapped step.
On a shared machine compare rows within one run, not across runs.
"""
from __future__ import annotations

import argparse
import collections
import time
from typing import Any, Callable

import torch


def _key(name: str, args: tuple) -> str:
    if name == "qgemm" and len(args) > 1 and hasattr(args[1], "n"):
        w = args[1]
        return f"K qgemm rows={args[0].shape[0]} n={w.n} k={w.k} bits={w.bits}"
    rows = args[0].shape[0] if args and hasattr(args[0], "shape") and args[0].dim() else "?"
    return f"K {name} rows={rows}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("-q", "--quantization", default="int4")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=33)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from jevons import LLM, SamplingParams
    from jevons.kernels import registry
    from jevons.kernels.cpu import elementwise, mla_prep, moe_qgemm, moe_router, qgemm, sparse_mla

    llm = LLM(args.model, dtype=args.dtype, quantization=args.quantization, progress=False)
    prompts = [{"prompt_token_ids": list(range(100 + i, 108 + i))} for i in range(args.batch)]
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    many = SamplingParams(temperature=0, max_tokens=args.steps + 1, ignore_eos=True)
    llm.generate(prompts, many, use_tqdm=False)
    t0 = time.perf_counter()
    llm.generate(prompts, one, use_tqdm=False)
    t1 = time.perf_counter()
    llm.generate(prompts, many, use_tqdm=False)
    t2 = time.perf_counter()
    print(f"unwrapped: {((t2 - t1) - (t1 - t0)) / args.steps * 1e3:.2f} ms a decode step (batch {args.batch})")

    excl: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    stack: list[float] = []

    def timed(label: Callable[[tuple], str], f: Callable[..., Any]) -> Callable[..., Any]:
        def g(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            stack.append(0.0)
            try:
                return f(*a, **k)
            finally:
                dt = time.perf_counter() - start
                child = stack.pop()
                name = label(a)
                excl[name] += dt - child
                calls[name] += 1
                if stack:
                    stack[-1] += dt
        return g

    for mod, fn in [(qgemm, "qgemm"), (moe_qgemm, "moe_qgemm"), (sparse_mla, "sparse_mla_decode"),
                    (moe_router, "route_experts"), (mla_prep, "mla_prep"), (elementwise, "rms_norm"),
                    (elementwise, "fused_add_rms_norm"), (elementwise, "silu_and_mul")]:
        setattr(mod, fn, timed(lambda a, n=fn: _key(n, a), getattr(mod, fn)))
    import jevons.models.layers.mla as mla_layer
    import jevons.models.layers.sparse_mla as sparse_layer

    mla_layer.mla_prep = sparse_layer.mla_prep = mla_prep.mla_prep
    registry._ops.cache_clear()  # the ops pick up the wrapped functions
    registry._by_device.clear()
    for m in llm.engine.runner.model.modules():
        m.forward = timed(lambda a, n=type(m).__name__: f"M {n}", m.forward)
    t0 = time.perf_counter()
    llm.generate(prompts, many, use_tqdm=False)
    total = time.perf_counter() - t0
    steps = args.steps + 1  # the prompt's step included: short, and its rows are listed apart
    print(f"wrapped: {total / steps * 1e3:.2f} ms a step over {steps} steps (the prompt's included)")
    kernels = 0.0
    for name, v in sorted(excl.items(), key=lambda kv: -kv[1]):
        kernels += v if name.startswith("K ") else 0.0
        print(f"{name:48s} {calls[name] / steps:6.1f} calls/step {v / steps * 1e3:8.3f} ms/step "
              f"{v / calls[name] * 1e6:9.1f} us/call")
    print(f"kernels {kernels / steps * 1e3:.2f} ms/step, everything else {(total - kernels) / steps * 1e3:.2f}")


if __name__ == "__main__":
    main()
