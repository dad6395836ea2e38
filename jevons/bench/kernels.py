"""`jevons bench kernels`: each kernel's time against the device's own limits.

First the two roofs are measured on the device itself: copy bandwidth (a
large device-to-device copy, bytes read + written) and the dense matmul rate
(a large square GEMM in the bench dtype). Then every kernel case reports its
median time, the bytes it must move and the FLOPs it must do, as GB/s and
TFLOP/s and as a fraction of those roofs. Decode kernels are judged on
bandwidth, GEMM-shaped ones on FLOP/s.

The "targets" preset uses the shapes named in issue 8 (DeepSeek-V3 MLA heads
at 4k context and batch 64, DeepSeek-V2-Lite experts at 8k tokens, a
Qwen2-1.5B-shaped attention); "small" is a smoke test that runs anywhere.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

# name -> builder(shape preset, device, dtype, ops) -> (fn, bytes, flops, description)
Case = Callable[[str, torch.device, torch.dtype, object], tuple[Callable[[], object], float, float, str]]


@dataclass
class Result:
    kernel: str
    shape: str
    backend: str
    time_us: float
    gb_s: float
    tflop_s: float
    pct_copy_bw: float
    pct_matmul: float


def _timer(device: torch.device, fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_roofs(device: torch.device, dtype: torch.dtype, big: bool) -> tuple[float, float]:
    """(copy bytes/s, matmul FLOP/s) measured on this device."""
    n_bytes = (1 << 30) if big else (32 << 20)
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = _timer(device, lambda: dst.copy_(src), 3, 10)
    copy_bw = 2 * n_bytes / t
    n = 8192 if big else 512
    mm_dtype = dtype if device.type == "cuda" else torch.float32  # CPU bf16 GEMMs are not its roof
    a = torch.randn(n, n, device=device).to(mm_dtype)
    b = torch.randn(n, n, device=device).to(mm_dtype)
    t = _timer(device, lambda: a @ b, 3, 10)
    return copy_bw, 2 * n**3 / t


def _paged(meta_q: list[int], meta_ctx: list[int], hq: int, hkv: int, d: int, bs: int, dev, dt):
    from jevons.kernels.attention_metadata import AttentionMetadata

    per = [math.ceil((c + q) / bs) for q, c in zip(meta_q, meta_ctx)]
    tables = torch.arange(sum(per)).split(per)
    bt = torch.nn.utils.rnn.pad_sequence(list(tables), batch_first=True)
    meta = AttentionMetadata.build(meta_q, meta_ctx, bt, bs, dev)
    n = sum(meta_q)
    kc = torch.randn(sum(per), bs, hkv, d, device=dev).to(dt)
    q = torch.randn(n, hq, d, device=dev).to(dt)
    return meta, kc, torch.randn_like(kc), q, torch.randn(n, hkv, d, device=dev).to(dt)


def case_paged_decode(preset, dev, dt, ops):
    b, ctx, hq, hkv, d = (64, 4096, 12, 2, 128) if preset == "targets" else (4, 256, 4, 2, 32)
    meta, kc, vc, q, k = _paged([1] * b, [ctx - 1] * b, hq, hkv, d, 16, dev, dt)
    e = kc.element_size()
    return (lambda: ops.paged_attention(q, k, k, kc, vc, meta, d**-0.5),
            2 * b * ctx * hkv * d * e, 4 * b * hq * ctx * d, f"B={b} ctx={ctx} Hq={hq} Hkv={hkv} D={d}")


def case_paged_prefill(preset, dev, dt, ops):
    n, hq, hkv, d = (4096, 12, 2, 128) if preset == "targets" else (128, 4, 2, 32)
    meta, kc, vc, q, k = _paged([n], [0], hq, hkv, d, 16, dev, dt)
    e = kc.element_size()
    return (lambda: ops.paged_attention(q, k, k, kc, vc, meta, d**-0.5),
            (2 * hq + 2 * hkv) * n * d * e, 2 * hq * n * n * d, f"prefill {n} tokens Hq={hq} Hkv={hkv} D={d}")


def case_mla_decode(preset, dev, dt, ops):
    from jevons.kernels.attention_metadata import AttentionMetadata

    big = preset == "targets"
    b, ctx, h, r, dr, dn, dv = (64, 4096, 128, 512, 64, 128, 128) if big else (4, 256, 16, 64, 16, 16, 16)
    bs = 16  # the engine's default cache block
    per = math.ceil(ctx / bs)
    bt = torch.arange(b * per).view(b, per)
    meta = AttentionMetadata.build([1] * b, [ctx - 1] * b, bt, bs, dev)
    cache = torch.randn(b * per, bs, r + dr, device=dev).to(dt)
    w = (torch.randn(h, dn + dv, r, device=dev) / r**0.5).to(dt)
    qn, qr = torch.randn(b, h, dn, device=dev).to(dt), torch.randn(b, h, dr, device=dev).to(dt)
    latent = torch.randn(b, r + dr, device=dev).to(dt)
    e = cache.element_size()
    nbytes = (b * ctx * (r + dr) + w.numel()) * e
    flops = 2 * b * h * ctx * (2 * r + dr) + 2 * b * h * (dn + dv) * r
    return (lambda: ops.mla_attention(qn, qr, latent, cache, meta, w, 0.1),
            nbytes, flops, f"B={b} ctx={ctx} H={h} R={r} Dr={dr}")


def case_fused_moe(preset, dev, dt, ops):
    t, e_, k, hid, inter = (8192, 64, 6, 2048, 1408) if preset == "targets" else (64, 8, 2, 64, 32)
    x = torch.randn(t, hid, device=dev).to(dt)
    w13 = (torch.randn(e_, 2 * inter, hid, device=dev) / hid**0.5).to(dt)
    w2 = (torch.randn(e_, hid, inter, device=dev) / inter**0.5).to(dt)
    ids = torch.rand(t, e_, device=dev).topk(k, dim=-1).indices
    wts = torch.rand(t, k, device=dev)
    nbytes = (w13.numel() + w2.numel() + 2 * x.numel()) * x.element_size()
    return (lambda: ops.fused_experts(x, w13, w2, wts, ids),
            nbytes, 6 * t * k * hid * inter, f"T={t} E={e_} k={k} H={hid} I={inter}")


def case_rmsnorm(preset, dev, dt, ops):
    t, hid = (8192, 2048) if preset == "targets" else (64, 256)
    x, r = torch.randn(t, hid, device=dev).to(dt), torch.randn(t, hid, device=dev).to(dt)
    w = torch.ones(hid, device=dev).to(dt)
    nbytes = 4 * x.numel() * x.element_size()  # read x and residual, write both
    return lambda: ops.fused_add_rms_norm(x, r, w, 1e-6), nbytes, 0.0, f"add+norm T={t} H={hid}"


def case_rope(preset, dev, dt, ops):
    n, hq, hk, d = (8192, 12, 2, 128) if preset == "targets" else (64, 4, 2, 32)
    q, k = torch.randn(n, hq, d, device=dev).to(dt), torch.randn(n, hk, d, device=dev).to(dt)
    cos, sin = torch.randn(n, 1, d, device=dev).to(dt), torch.randn(n, 1, d, device=dev).to(dt)
    nbytes = (2 * (q.numel() + k.numel()) + 2 * cos.numel()) * q.element_size()
    return lambda: ops.rotary(q, k, cos, sin), nbytes, 0.0, f"N={n} Hq={hq} Hk={hk} D={d}"


def case_kv_write(preset, dev, dt, ops):
    n, hkv, d = (8192, 2, 128) if preset == "targets" else (64, 2, 32)
    kc = torch.zeros(n // 16 + 1, 16, hkv, d, device=dev, dtype=dt)
    k = torch.randn(n, hkv, d, device=dev).to(dt)
    slots = torch.randperm(n, device=dev)
    return lambda: ops.write_kv(kc, kc, k, k, slots), 4 * k.numel() * k.element_size(), 0.0, f"N={n} Hkv={hkv} D={d}"


def case_routing(preset, dev, dt, ops):
    from jevons.kernels.torch_ref.moe_routing import RouterConfig

    t = 8192 if preset == "targets" else 64
    cfg = RouterConfig(num_experts=256, top_k=8, scoring="sigmoid", method="noaux_tc", n_group=8, topk_group=4,
                       norm_topk_prob=True, routed_scaling_factor=2.5)
    logits = torch.randn(t, 256, device=dev)
    bias = torch.randn(256, device=dev) * 0.01
    return lambda: ops.select_experts(logits, cfg, bias), logits.numel() * 4, 0.0, f"V3 router T={t} E=256 k=8"


def case_fp8_gemm(preset, dev, dt, ops):
    m, n, k = (8192, 7168, 7168) if preset == "targets" else (64, 128, 128)
    w = torch.randn(n, k, device=dev).to(torch.float8_e4m3fn)
    s = torch.rand(math.ceil(n / 128), math.ceil(k / 128), device=dev)
    x = torch.randn(m, k, device=dev).to(dt)
    nbytes = w.numel() + (x.numel() + m * n) * x.element_size()
    return lambda: ops.fp8_linear(x, w, s, (128, 128)), nbytes, 2 * m * n * k, f"M={m} N={n} K={k} block 128"


CASES: dict[str, Case] = {
    "paged_decode": case_paged_decode, "paged_prefill": case_paged_prefill, "mla_decode": case_mla_decode,
    "fused_moe": case_fused_moe, "rmsnorm": case_rmsnorm, "rope": case_rope, "kv_write": case_kv_write,
    "routing": case_routing, "fp8_gemm": case_fp8_gemm,
}


def add_kernels_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("kernels", help="time each kernel against measured copy bandwidth and matmul rate")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"],
                   help="kernel backend (default: the registry's choice for the device)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--kernels", nargs="+", default=list(CASES), choices=list(CASES), metavar="NAME",
                   help=f"subset to run (default: all: {', '.join(CASES)})")
    p.add_argument("--preset", default=None, choices=["targets", "small"],
                   help="shapes: the issue's targets (default on cuda) or a small smoke test (default elsewhere)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=run_kernel_bench)
    return p


def run_kernel_bench(args: argparse.Namespace) -> int:
    from jevons.kernels import registry

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    preset = args.preset or ("targets" if device.type == "cuda" else "small")
    backend = registry.backend_for(device) if args.backend == "auto" else args.backend
    ops = registry.get_ops(backend)
    copy_bw, mm_rate = measure_roofs(device, dtype, big=preset == "targets")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    mm_label = args.dtype if device.type == "cuda" else "float32"  # see measure_roofs
    print(f"device {name}: copy {copy_bw / 1e9:.0f} GB/s, {mm_label} matmul {mm_rate / 1e12:.1f} TFLOP/s; "
          f"backend {backend}, preset {preset}")
    results: list[Result] = []
    for kname in args.kernels:
        try:
            fn, nbytes, flops, desc = CASES[kname](preset, device, dtype, ops)
            t = _timer(device, fn, args.warmup, args.iters)
        except Exception as e:  # one kernel failing (e.g. FP8 on an old GPU) should not hide the rest
            print(f"{kname:14s} failed: {type(e).__name__}: {e}")
            continue
        r = Result(kname, desc, backend, t * 1e6, nbytes / t / 1e9, flops / t / 1e12,
                   100 * nbytes / t / copy_bw, 100 * flops / t / mm_rate)
        results.append(r)
        print(f"{kname:14s} {r.time_us:10.1f} us {r.gb_s:8.1f} GB/s ({r.pct_copy_bw:5.1f}% copy) "
              f"{r.tflop_s:7.2f} TFLOP/s ({r.pct_matmul:5.1f}% matmul)  {desc}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "copy_gb_s": copy_bw / 1e9, "matmul_tflop_s": mm_rate / 1e12,
                       "dtype": args.dtype, "preset": preset, "results": [asdict(r) for r in results]}, f, indent=2)
    return 0 if len(results) == len(args.kernels) else 1
