"""The request-rate sweep as a picture: latency against achieved throughput,
one line per server. A better engine sits lower (faster) and further right
(more tokens per second); the knee is where queueing starts."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

PANELS = (("ttft", "TTFT (ms)"), ("tpot", "TPOT (ms)"), ("e2el", "E2E latency (ms)"))


def _rate_label(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g}"


def plot_sweep(series: dict[str, list[dict[str, Any]]], path: str | Path, title: str = "") -> Path:
    """series: server name -> one metrics dict per request rate (each with a
    "request_rate" key plus the metrics.calculate_metrics names)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server; must precede pyplot
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4), constrained_layout=True)
    for ax, (key, label) in zip(axes, PANELS):
        for name, points in series.items():
            pts = sorted(points, key=lambda m: m["output_throughput"])
            xs = [m["output_throughput"] for m in pts]
            line, = ax.plot(xs, [m[f"median_{key}_ms"] for m in pts], marker="o", label=f"{name} median")
            ax.plot(xs, [m[f"p99_{key}_ms"] for m in pts], marker="x", linestyle="--", color=line.get_color(),
                    label=f"{name} p99")
            for m in pts:
                ax.annotate(_rate_label(m["request_rate"]), (m["output_throughput"], m[f"median_{key}_ms"]),
                            textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xlabel("output throughput (tok/s)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title + "  (labels: request rate, req/s)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
