"""`jevons usage`: what each key and model used and was billed, from the ledger.

    jevons usage                                       # the default ledger, by key, model, day
    jevons usage --ledger ledger.db                    # by key, model, day
    jevons usage --ledger ledger.db --by model --since 2025-03-01 --csv usage.csv
    jevons usage --ledger ledger.db --usd-per-hour 16  # + serving cost per M output tokens
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from jevons.cost.ledger import Ledger, resolve_ledger_path, to_csv
from jevons.cost.money import format_amount
from jevons.cost.serving import usd_per_million_tokens

_SHOWN = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens",
          "billed", "currency", "mean_latency_s")
_MONEY = ("billed",)  # printed as exact decimals, every digit


def add_usage_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("usage", help="usage and billing summaries from the request ledger",
                              description="Summarize the request ledger by key, model and day (UTC).")
    p.add_argument("--ledger", default="default",
                   help="the SQLite ledger `jevons serve --ledger` writes; 'default' is "
                        "~/.local/share/jevons/ledger.sqlite (default: %(default)s)")
    p.add_argument("--by", default="key,model,day",
                   help="comma-separated grouping: key, model, day, hour (empty for totals)")
    p.add_argument("--since", help="start, inclusive: unix seconds or ISO date/time (UTC)")
    p.add_argument("--until", help="end, exclusive: unix seconds or ISO date/time (UTC)")
    p.add_argument("--csv", metavar="FILE", help="write CSV to FILE ('-' for stdout)")
    p.add_argument("--json", action="store_true", help="print rows as JSON")
    p.add_argument("--usd-per-hour", type=float, default=None,
                   help="machine cost; adds serving $ per million output tokens over each row's span")
    p.set_defaults(func=run_usage)


def parse_time(value: str | None) -> float | None:
    """Unix seconds, or an ISO date/time; naive times are UTC."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        t = datetime.fromisoformat(value)
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def with_serving_cost(rows: list[dict[str, Any]], usd_per_hour: float) -> list[dict[str, Any]]:
    """Serving cost over the wall-clock span of each row's requests (first start to
    last finish): an estimate, as the ledger does not know when the machine idled."""
    out = []
    for r in rows:
        span = (r["last_end"] or 0.0) - (r["first_start"] or 0.0)
        cost = usd_per_million_tokens(usd_per_hour, r["completion_tokens"] or 0, span)
        out.append({**r, "serving_usd_per_million_output": cost})
    return out


def _table(rows: list[dict[str, Any]], groups: list[str], out: TextIO) -> None:
    extra = ["serving_usd_per_million_output"] if rows and "serving_usd_per_million_output" in rows[0] else []
    cols = groups + list(_SHOWN) + extra

    def cell(v: Any, col: str) -> str:
        if col in _MONEY and isinstance(v, (int, float)):
            return format_amount(v)
        if isinstance(v, float):
            return f"{v:,.6f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.2f}"
        return "" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    body = [[cell(r.get(c), c) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(cols)]
    out.write("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip() + "\n")
    for b in body:
        out.write("  ".join(v.ljust(w) for v, w in zip(b, widths)).rstrip() + "\n")


def run_usage(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    path = resolve_ledger_path(args.ledger)
    if not path.exists():
        print(f"jevons usage: no ledger at {path}", file=sys.stderr)
        return 2
    groups = [g.strip() for g in (args.by or "").split(",") if g.strip()]
    try:
        with Ledger(path) as ledger:
            rows = ledger.summarize(groups, since=parse_time(args.since), until=parse_time(args.until))
    except ValueError as e:
        print(f"jevons usage: {e}", file=sys.stderr)
        return 2
    if args.usd_per_hour is not None:
        rows = with_serving_cost(rows, args.usd_per_hour)
    if args.csv:
        to_csv(rows, out if args.csv == "-" else args.csv)
    elif args.json:
        json.dump(rows, out, indent=2)
        out.write("\n")
    else:
        _table(rows, groups, out)
    return 0
