"""DeepSeek's per-layer glue on the CPU: the C router (kernels/cpu/moe_router.py)
against torch's gate + select_experts, and MLA's one-call glue
(kernels/cpu/mla_prep.py) against the layer's torch steps, side by side.

    python -m jevons.bench.deepseek_glue [--rows 1 32] [--threads 1] [--reps 5]

Router: V2-Lite's (64 experts of hidden 2,048, top-6 softmax) and V3's (256
of 7,168, top-8 sigmoid + bias in 8 groups); "cold" sweeps 64 MB between
calls, so the gate comes from DRAM as it does in a decode step. MLA glue:
V2-Lite's shapes (16 heads, Dn 128, Dr 64, R 512, YaRN tables). Prints the
median of 300 calls, best of --reps, in us and the torch / C ratio; on a
shared machine only the ratios mean anything.
"""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace
from typing import Callable

import torch

from jevons import runtime
from jevons.kernels.cpu import moe_router
from jevons.kernels.cpu.mla_prep import mla_prep
from jevons.kernels.registry import ops_for
from jevons.kernels.torch_ref import moe_routing
from jevons.kernels.torch_ref.moe_routing import RouterConfig
from jevons.models.layers.mla import MLAConfig, MLAttention
from jevons.models.layers.rotary import RotaryEmbedding

ROUTERS = {
    "v2-lite": (RouterConfig(64, 6, "softmax", "greedy", 1, 1, False, 1.0), 2048),
    "v3": (RouterConfig(256, 8, "sigmoid", "noaux_tc", 8, 4, True, 2.5), 7168),
}
YARN = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
        "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}


def median_us(f: Callable[[], object], reps: int, before: Callable[[], object] | None = None) -> float:
    best = float("inf")
    for _ in range(reps):
        ts = []
        for _ in range(300):
            if before is not None:
                before()
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        ts.sort()
        best = min(best, ts[len(ts) // 2])
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runtime.configure(runtime.RuntimeConfig(kernel_backend="cpu"))
    g = torch.Generator().manual_seed(0)
    junk = torch.empty(16 * 2**20)
    sweep = lambda: junk.add_(1.0)  # noqa: E731
    for name, (cfg, hidden) in ROUTERS.items():
        w = torch.randn(cfg.num_experts, hidden, generator=g) / hidden**0.5
        bias = torch.randn(cfg.num_experts, generator=g) * 0.1 if cfg.method == "noaux_tc" else None
        for rows in args.rows:
            x = torch.randn(rows, hidden, generator=g)
            for cache, before in (("warm", None), ("cold", sweep)):
                t = median_us(lambda: moe_routing.route_experts(x, w, cfg, bias), args.reps, before)
                c = median_us(lambda: moe_router.route_experts(x, w, cfg, bias), args.reps, before)
                print(f"router {name:7s} rows={rows:3d} {cache}: torch {t:8.1f} us  C {c:7.1f} us  {t / c:5.2f}x")
    c = MLAConfig(hidden=2048, num_heads=16, q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128,
                  qk_rope_head_dim=64, v_head_dim=128, bias=False, rope_interleave=True, scale=0.1)
    layer = MLAttention(c, 0, RotaryEmbedding(64, 163840, 10000.0, YARN))
    ops = ops_for("cpu")
    for rows in args.rows:
        q, kv = torch.randn(rows, 16, 192, generator=g), torch.randn(rows, 576, generator=g)
        pos, slots = torch.arange(100, 100 + rows), torch.arange(rows)
        kv_cache = torch.zeros(64, 16, 576)
        ctx = SimpleNamespace(attn=SimpleNamespace(slot_mapping=slots))
        t = median_us(lambda: layer._prep_torch(pos, q, kv, kv_cache, ctx, ops), args.reps)
        cc = median_us(lambda: mla_prep(q, kv, 128, 512, layer.rotary.cos, layer.rotary.sin, pos,
                                        layer.kv_a_layernorm.weight, 1e-6, True, kv_cache, slots), args.reps)
        print(f"mla glue v2-lite rows={rows:3d}: torch {t:8.1f} us  C {cc:7.1f} us  {t / cc:5.2f}x")


if __name__ == "__main__":
    main()
