"""Printing and saving results: aligned plain-text tables (printed last, after
progress bars are gone) and JSON files that hold the exact commands, settings
and machine, so a number in docs/benchmarks.md can be traced and rerun."""
from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # NaN: a ratio with a missing side
            return "-"
        return f"{v:,.2f}" if abs(v) < 1e9 else f"{v:.3g}"
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [] if title is None else [title]
    lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def ratio(a: float | None, b: float | None) -> float:
    """jevons / peer; NaN when either side is missing or the peer is zero."""
    if a is None or b is None or b == 0:
        return float("nan")
    return a / b


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                            "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    doc = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(["jevons", *sys.argv[1:]]) if sys.argv else "", "machine": machine(), **payload}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2, default=str) + "\n")
