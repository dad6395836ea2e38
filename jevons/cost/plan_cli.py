"""`jevons plan`: size and price a deployment before buying it.

    jevons plan deepseek-v3 --hardware h200 --gpus 8 --precision fp8
    jevons plan ./my-model/config.json --hardware cpu --bandwidth-gbs 40 --tflops 1.5 --json

Besides the roofline figures it prints the parallel layout it recommends for
`--devices` devices (cost/layout.py) as the `jevons serve` command that runs it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, TextIO

from jevons.cost.calibrate import apply_measured, load_measured
from jevons.cost.hardware import GB, PRECISION_BYTES, TB, get_hardware, list_hardware
from jevons.cost.layout import Layout, recommend_layout
from jevons.cost.model_stats import model_stats
from jevons.cost.planner import Plan, Workload, load_model_config, plan
from jevons.cost.roofline import Deployment


def add_plan_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan", help="capacity and cost planner (roofline or calibrated)",
        description="Memory, throughput and $ per million tokens for a model on given hardware.")
    p.add_argument("model", help="preset name (e.g. deepseek-v3) or a config.json path / model dir")
    hw = p.add_argument_group("hardware (every number overrides the preset)")
    hw.add_argument("--hardware", default="h100", help=f"one of {', '.join(list_hardware())}")
    hw.add_argument("--gpus", type=int, default=1, help="devices holding one copy of the model")
    hw.add_argument("--usd-per-gpu-hour", type=float, help="price per device-hour")
    hw.add_argument("--memory-gb", type=float, help="memory per device, GB")
    hw.add_argument("--bandwidth-gbs", type=float, help="memory bandwidth per device, GB/s")
    hw.add_argument("--tflops", type=float, help="dense bf16 TFLOP/s per device")
    hw.add_argument("--tflops-fp8", type=float, help="dense fp8 TFLOP/s per device")
    hw.add_argument("--tflops-int8", type=float, help="dense int8 TOP/s per device")
    hw.add_argument("--tflops-fp32", type=float, help="dense fp32 TFLOP/s per device")
    hw.add_argument("--gpus-per-node", type=int, help="devices per node (for per-node figures and the layout)")
    hw.add_argument("--devices", type=int, help="devices to lay the model out on, TP x EP x DP over nodes "
                                                "(default: --gpus)")
    hw.add_argument("--mem-util", type=float, default=0.9, help="fraction of memory for weights+KV")
    hw.add_argument("--bw-efficiency", type=float, default=1.0, help="achieved/peak bandwidth")
    hw.add_argument("--flops-efficiency", type=float, default=1.0, help="achieved/peak FLOP/s")
    hw.add_argument("--prefill-chunk", type=int, default=8192, help="tokens per prefill step")
    prec = sorted(PRECISION_BYTES)
    p.add_argument("--precision", choices=prec, help="weight precision (default: the checkpoint's)")
    p.add_argument("--kv-dtype", choices=prec, default="bf16", help="KV cache precision")
    wl = p.add_argument_group("workload")
    wl.add_argument("--input-len", type=int, default=1024)
    wl.add_argument("--output-len", type=int, default=256)
    wl.add_argument("--cache-hit", type=float, default=0.0, help="fraction of input tokens hitting the cache")
    wl.add_argument("--target-tok-s", type=float, help="decode tok/s each user must see")
    wl.add_argument("--users", type=int, help="concurrent users to serve (sizes the fleet)")
    wl.add_argument("--concurrency", type=int, help="force the decode batch size")
    p.add_argument("--calibrate", metavar="RESULTS_JSON", help="replace roofline figures with measured ones")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run_plan)


def _deployment(args: argparse.Namespace, native_precision: str) -> Deployment:
    hw = get_hardware(args.hardware).override(
        memory_bytes=args.memory_gb * GB if args.memory_gb is not None else None,
        memory_bandwidth=args.bandwidth_gbs * GB if args.bandwidth_gbs is not None else None,
        flops_bf16=args.tflops * TB if args.tflops is not None else None,
        flops_fp8=args.tflops_fp8 * TB if args.tflops_fp8 is not None else None,
        flops_int8=args.tflops_int8 * TB if args.tflops_int8 is not None else None,
        flops_fp32=args.tflops_fp32 * TB if args.tflops_fp32 is not None else None,
        gpus_per_node=args.gpus_per_node,
    )
    return Deployment(
        hardware=hw, gpus=args.gpus, precision=args.precision or native_precision,
        kv_dtype=args.kv_dtype, usd_per_gpu_hour=args.usd_per_gpu_hour,
        memory_utilization=args.mem_util, prefill_chunk_tokens=args.prefill_chunk,
        bandwidth_efficiency=args.bw_efficiency, flops_efficiency=args.flops_efficiency,
    )


def build_plan(args: argparse.Namespace) -> Plan:
    name, config = load_model_config(args.model)
    dep = _deployment(args, model_stats(config).native_precision)
    wl = Workload(input_len=args.input_len, output_len=args.output_len,
                  cache_hit_rate=args.cache_hit, target_tok_s_per_user=args.target_tok_s,
                  users=args.users, concurrency=args.concurrency)
    result = plan(config, dep, wl, model_name=name)
    if args.calibrate:
        result = apply_measured(result, load_measured(args.calibrate))
    return result


def build_layout(args: argparse.Namespace) -> Layout:
    """The TP/EP/DP layout for `--devices` (cost/layout.py), with KV room for
    `--concurrency` full sequences per replica (16 if unset)."""
    _, config = load_model_config(args.model)
    stats = model_stats(config)
    dep = _deployment(args, stats.native_precision)
    devices = args.devices or args.gpus
    if devices < 1:
        raise ValueError("--devices must be at least 1")
    return recommend_layout(config, stats, dep, devices, args.input_len + args.output_len,
                            min_sequences=args.concurrency or 16)


def run_plan(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        result = build_plan(args)
        layout = build_layout(args)
    except (ValueError, OSError) as e:
        print(f"jevons plan: {e}", file=sys.stderr)
        return 2
    if args.json:
        # inf is not JSON; a plan that cannot produce tokens reports null instead.
        data = {k: (None if isinstance(v, float) and math.isinf(v) else v)
                for k, v in result.to_dict().items()}
        data["layout"] = layout.to_dict(args.model)
        json.dump(data, out, indent=2)
        out.write("\n")
    else:
        out.write(format_plan(result))
        out.write(format_layout(layout, args.model))
    return 0


def format_layout(layout: Layout, model: str) -> str:
    lines = ["", f"parallel layout     {layout.describe()}", f"serve with          {layout.command(model)}"]
    lines += [f"note: {n}" for n in layout.notes]
    return "\n".join(lines) + "\n"


def _count(n: int) -> str:
    return f"{n / 1e9:,.2f}B" if n >= 1e9 else f"{n / 1e6:,.1f}M"


def _gb(x: float) -> str:
    return f"{x / GB:,.1f} GB"


def _rate(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:,.1f} tok/s"


def _usd(x: float) -> str:
    """Dollars with four significant digits, however small (a request can cost $0.00002)."""
    if math.isinf(x):
        return "n/a"
    if x == 0 or abs(x) >= 1:
        return f"${x:,.2f}"
    decimals = 3 - math.floor(math.log10(abs(x)))
    return f"${x:.{decimals}f}"


def format_plan(p: Plan) -> str:
    wl = p.workload
    rows: list[tuple[str, str]] = [
        ("model", f"{p.model} ({p.architecture}, {p.attention})"),
        ("parameters", f"{_count(p.params_total)} total, {_count(p.params_active)} active"
                       + (f", +{_count(p.params_mtp)} MTP (not loaded)" if p.params_mtp else "")),
        ("hardware", f"{p.gpus} x {p.hardware}, weights {p.precision}, KV {p.kv_dtype}"),
        ("workload", f"in {wl['input_len']}, out {wl['output_len']}, "
                     f"cache hit {wl['cache_hit_rate']:.1%}"),
        ("", ""),
        ("weight memory", _gb(p.weight_bytes)),
        ("usable memory", _gb(p.usable_memory_bytes)),
        ("KV cache budget", _gb(p.kv_budget_bytes)),
        ("KV bytes/token", f"{p.kv_bytes_per_token:,.0f} (full per-head K/V would be "
                           f"{p.kv_bytes_per_token_mha:,.0f}: "
                           f"{p.kv_bytes_per_token / p.kv_bytes_per_token_mha:.1%})"),
        ("max concurrent seqs", f"{p.max_concurrent_sequences:,}"),
        ("", ""),
        ("decode, batch 1", f"{_rate(p.decode_tok_s_per_user_batch1)} per user"),
        (f"decode, batch {p.decode_batch}",
         f"{_rate(p.decode_tok_s_per_user)} per user, "
         f"{_rate(p.decode_tok_s_aggregate)} total ({p.decode_bound}-bound)"),
        ("decode, max batch", _rate(p.decode_tok_s_aggregate_max)),
        ("prefill", f"{_rate(p.prefill_tok_s)} computed, {_rate(p.input_tok_s)} input incl. hits "
                    f"({p.prefill_bound}-bound)"),
        (f"per node ({p.gpus_per_node} devices)",
         f"{_rate(p.decode_tok_s_per_node)} decode, {_rate(p.input_tok_s_per_node)} input"),
    ]
    if wl.get("target_tok_s_per_user"):
        gpus = p.gpus_for_target if p.gpus_for_target is not None else "unreachable"
        rows.append(("GPUs for target", f"{gpus} (for {wl['target_tok_s_per_user']} tok/s/user)"))
    if p.gpus_needed is not None:
        rows.append(("fleet", f"{p.replicas_needed} x {p.gpus} = {p.gpus_needed} GPUs "
                              f"for {wl['users']} users"))
    rows += [
        ("", ""),
        ("machine cost", f"${p.usd_per_hour:,.2f}/hour"),
        ("$/M input tokens", _usd(p.usd_per_million_input_tokens)),
        ("$/M output tokens", _usd(p.usd_per_million_output_tokens)),
        ("$/request", _usd(p.usd_per_request)),
        ("figures", p.source),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}".rstrip() if k else "" for k, v in rows]
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines) + "\n"
