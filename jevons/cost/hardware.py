"""Accelerator presets for the planner: memory bandwidth, dense FLOP/s, memory, price.

Figures are vendor datasheet peaks for the SXM/OAM parts, dense (no 2:4 sparsity).
They are ceilings; real kernels reach perhaps 60-80% of bandwidth and 40-70% of
FLOP/s, which is what `--calibrate` with measured numbers corrects. Every field can
be overridden (`Hardware.override`), and `cpu` exists only to be overridden with the
machine's own bandwidth and FLOP/s.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

TB = 1e12
GB = 1e9

# Bytes per weight for each supported precision. int4 ignores the few percent that
# group scales add, like the other formats ignore their scales.
PRECISION_BYTES: dict[str, float] = {
    "fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5,
}

# DeepSeek's inference cost post (Feb 2025) assumes $2 per H800-hour; we use the same
# default rental price for every GPU so plans compare hardware, not price lists.
DEFAULT_USD_PER_GPU_HOUR = 2.0


@dataclass(frozen=True)
class Hardware:
    """One accelerator (or one CPU socket). Rates are per device, in bytes/s and FLOP/s."""

    name: str
    memory_bandwidth: float     # bytes/s
    flops_bf16: float           # dense FLOP/s at bf16/fp16
    memory_bytes: float
    flops_fp8: float | None = None   # None: no FP8 tensor cores (FP8 weights compute in bf16)
    flops_int8: float | None = None  # None: int8 weights are dequantized to bf16
    flops_fp32: float | None = None  # None: half the bf16 rate (TF32 tensor cores)
    gpus_per_node: int = 8
    usd_per_hour: float = DEFAULT_USD_PER_GPU_HOUR  # per device

    def flops_for(self, precision: str) -> float:
        """The matmul rate for weights of `precision`. int4 is weight-only (no int4
        tensor-core path in common kernels), so it computes at bf16."""
        if precision == "fp8" and self.flops_fp8:
            return self.flops_fp8
        if precision == "int8" and self.flops_int8:
            return self.flops_int8
        if precision == "fp32":
            return self.flops_fp32 or self.flops_bf16 / 2
        return self.flops_bf16

    def override(self, **fields: float | int | str | None) -> "Hardware":
        """A copy with the given fields replaced; None values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in fields.items() if v is not None})


HARDWARE: dict[str, Hardware] = {
    "h100": Hardware("H100 SXM 80GB", 3.35 * TB, 989 * TB, 80 * GB, flops_fp8=1979 * TB,
                     flops_int8=1979 * TB),
    "h200": Hardware("H200 SXM 141GB", 4.8 * TB, 989 * TB, 141 * GB, flops_fp8=1979 * TB,
                     flops_int8=1979 * TB),
    # The export H100: same HBM3 and tensor cores, NVLink cut to 400 GB/s (not modeled:
    # the planner has no interconnect term).
    "h800": Hardware("H800 SXM 80GB", 3.35 * TB, 989 * TB, 80 * GB, flops_fp8=1979 * TB,
                     flops_int8=1979 * TB),
    "a100": Hardware("A100 SXM 80GB", 2.039 * TB, 312 * TB, 80 * GB, flops_int8=624 * TB),
    "mi300x": Hardware("MI300X 192GB", 5.3 * TB, 1307 * TB, 192 * GB, flops_fp8=2615 * TB,
                       flops_int8=2615 * TB),
    # A placeholder CPU, roughly a small 2-core VM; pass the real machine's figures
    # (docs/cost.md shows how to measure them). Owned hardware costs nothing per hour
    # by default.
    "cpu": Hardware("CPU", 20 * GB, 0.2 * TB, 24 * GB, flops_fp32=0.1 * TB, gpus_per_node=1,
                    usd_per_hour=0.0),
}

_ALIASES = {"a100-80gb": "a100", "a100-sxm": "a100", "h100-sxm": "h100", "mi300": "mi300x"}


def list_hardware() -> list[str]:
    return sorted(HARDWARE)


def get_hardware(name: str) -> Hardware:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in HARDWARE:
        raise ValueError(f"unknown hardware {name!r}; known: {', '.join(list_hardware())}")
    return HARDWARE[key]


def precision_bytes(precision: str) -> float:
    if precision not in PRECISION_BYTES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISION_BYTES)}")
    return PRECISION_BYTES[precision]
