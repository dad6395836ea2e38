"""Plot $ per million output tokens against decode concurrency (docs/cost_concurrency.png).

    python -m jevons.cost.plot_cost [OUT.png]

Each curve is the planner's roofline for one deployment: cost falls as more
sequences share each weight read, until the KV reads (memory) or the FLOPs
(compute) dominate and the curve flattens; it ends where KV memory runs out.
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402

from jevons.cost.hardware import get_hardware  # noqa: E402
from jevons.cost.planner import Workload, output_cost_curve  # noqa: E402
from jevons.cost.roofline import Deployment  # noqa: E402
from jevons.loader.presets import get_preset  # noqa: E402

WORKLOAD = Workload(input_len=1024, output_len=256)
CURVES: list[tuple[str, str, Deployment]] = [
    ("R1-Distill-Qwen-7B, bf16, 1xH100", "deepseek-r1-distill-qwen-7b",
     Deployment(get_hardware("h100"), gpus=1, precision="bf16")),
    ("R1-Distill-Llama-70B, fp8, 2xH100", "deepseek-r1-distill-llama-70b",
     Deployment(get_hardware("h100"), gpus=2, precision="fp8")),
    ("DeepSeek-V2-Lite, bf16, 1xH100", "deepseek-v2-lite",
     Deployment(get_hardware("h100"), gpus=1, precision="bf16")),
    ("DeepSeek-V3, fp8, 8xH200", "deepseek-v3",
     Deployment(get_hardware("h200"), gpus=8, precision="fp8")),
]


def batches(limit: int = 65536) -> list[int]:
    """1, 2, 3 ... then about 24 points per decade: smooth on a log axis."""
    out, b = [], 1
    while b <= limit:
        out.append(b)
        b = max(b + 1, int(b * 1.1))
    return out


def main(out: str = "docs/cost_concurrency.png") -> Path:
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for label, preset, dep in CURVES:
        cfg = get_preset(preset)
        rows = output_cost_curve(cfg, dep, WORKLOAD, batches())
        if not rows:
            continue
        xs, _, ys = zip(*rows)
        line, = ax.plot(xs, ys, label=f"{label} (${dep.usd_per_hour:.0f}/h)")
        ax.plot(xs[-1], ys[-1], "o", color=line.get_color())  # KV memory full
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent sequences (decode batch)")
    ax.set_ylabel("$ per million output tokens (roofline)")
    ax.set_title(f"Decode cost vs concurrency: {WORKLOAD.input_len} in / {WORKLOAD.output_len} out, "
                 "$2 per GPU-hour")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, "dot = KV cache full; pure roofline (no efficiency losses, no interconnect)",
             fontsize=7, alpha=0.7)
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(main(*sys.argv[1:2]))
