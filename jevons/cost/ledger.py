"""The usage ledger: one SQLite row per finished request, durable before the reply.

Durability contract: `record()` returns only after the row's transaction is
committed, and the server sends the response only after `record()` returns. So a
`kill -9` at any moment loses no request whose response went out.

Why these SQLite settings:
- WAL mode: a commit appends to the -wal file instead of rewriting pages, readers
  (`jevons usage`, GET /v1/usage) never block the writer, and a killed process
  leaves a WAL that the next open replays.
- synchronous=FULL (default): fsync the WAL on every commit. A process kill alone
  would not lose a committed row even with NORMAL (the OS already holds the bytes),
  but an OS crash or power cut would lose the last NORMAL commits; FULL also keeps
  those. The price is one fsync per request, milliseconds against requests that
  take seconds. Pass synchronous="NORMAL" for very high request rates.
- One connection behind a lock: SQLite serialises writers anyway, and a lock makes
  the object safe to share between the event loop's executor threads.

Money is exact (money.py): `billed_units` holds the billed amount as an integer
number of 1e-10 currency units, and summaries add those integers; `billed` (REAL)
is still written, for readers of the first schema. A ledger from before
`billed_units` existed is migrated when it is opened (schema version 1).
"""
from __future__ import annotations

import csv
import os
import sqlite3
import threading
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, TextIO

from jevons.cost.money import from_units, to_float, to_units

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    billed REAL NOT NULL,
    currency TEXT NOT NULL,
    latency_s REAL NOT NULL,
    finish_reason TEXT NOT NULL,
    created REAL NOT NULL,
    billed_units INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created);
"""
# PRAGMA user_version: 0 the first schema (billed as REAL only), 1 with billed_units.
_SCHEMA_VERSION = 1

# group_by names -> SQL expressions. Days are UTC calendar days.
_GROUPS: dict[str, str] = {
    "key": "key_id",
    "model": "model",
    "day": "strftime('%Y-%m-%d', created, 'unixepoch')",
    "hour": "strftime('%Y-%m-%dT%H:00', created, 'unixepoch')",
}


@dataclass(frozen=True)
class LedgerEntry:
    """One finished request. Token counts follow the OpenAI usage object:
    cached_tokens is the part of prompt_tokens that hit the prefix cache, and
    reasoning_tokens is the part of completion_tokens spent thinking."""

    request_id: str
    key_id: str
    model: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    billed: float | Decimal  # read back as the float nearest to the exact amount
    currency: str
    latency_s: float
    finish_reason: str
    created: float  # unix time, seconds

    @property
    def billed_units(self) -> int:
        """The billed amount in integer units of 1e-10, exactly."""
        return to_units(self.billed)


_COLUMNS = tuple(f.name for f in fields(LedgerEntry))
_BILLED = _COLUMNS.index("billed")
# Read back: the exact integer amount in place of the REAL column.
_SELECT = ", ".join("billed_units" if c == "billed" else c for c in _COLUMNS)


def default_ledger_path() -> Path:
    """$XDG_DATA_HOME/jevons/ledger.sqlite (~/.local/share/jevons/ledger.sqlite):
    where `jevons serve --ledger default` writes and `jevons usage` reads by default."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "jevons" / "ledger.sqlite"


def resolve_ledger_path(value: str | Path) -> Path:
    """A --ledger value: a path, or "default" for default_ledger_path()."""
    return default_ledger_path() if str(value) == "default" else Path(value).expanduser()


def _unix(t: float | datetime | None) -> float | None:
    if t is None or isinstance(t, (int, float)):
        return t
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


class Ledger:
    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a commit is explicit.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=30.0)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._conn.executescript(_SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        """Bring a ledger of an older schema up to date, in one transaction."""
        if self._conn.execute("PRAGMA user_version").fetchone()[0] >= _SCHEMA_VERSION:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            if self._conn.execute("PRAGMA user_version").fetchone()[0] < _SCHEMA_VERSION:  # another opener won
                cols = {row[1] for row in self._conn.execute("PRAGMA table_info(requests)")}
                if "billed_units" not in cols:
                    self._conn.execute("ALTER TABLE requests ADD COLUMN billed_units INTEGER NOT NULL DEFAULT 0")
                # A stored float is read as the decimal its repr shows: 2.2340000000000003e-05
                # becomes 0.0000223400, rounded to the unit like any amount.
                rows = self._conn.execute("SELECT seq, billed FROM requests").fetchall()
                self._conn.executemany("UPDATE requests SET billed_units = ? WHERE seq = ?",
                                       [(to_units(float(b)), seq) for seq, b in rows])
                self._conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def record(self, entry: LedgerEntry) -> None:
        """Append one entry; returns only once it is committed."""
        self.record_many([entry])

    def record_many(self, entries: Iterable[LedgerEntry]) -> None:
        rows = []
        for e in entries:
            row = list(astuple(e))
            row[_BILLED] = to_float(e.billed)
            rows.append((*row, e.billed_units))
        names = (*_COLUMNS, "billed_units")
        sql = f"INSERT INTO requests ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(sql, rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def entries(self, since: float | datetime | None = None,
                until: float | datetime | None = None) -> list[LedgerEntry]:
        where, params = _window(since, until)
        with self._lock:
            cur = self._conn.execute(f"SELECT {_SELECT} FROM requests {where} ORDER BY seq", params)
            rows = cur.fetchall()
        return [LedgerEntry(*row[:_BILLED], to_float(from_units(row[_BILLED])), *row[_BILLED + 1:])
                for row in rows]

    def summarize(self, group_by: Iterable[str] = ("key", "model", "day"),
                  since: float | datetime | None = None,
                  until: float | datetime | None = None) -> list[dict[str, Any]]:
        """Totals per group. Currency is always a grouping column: amounts in
        different currencies are never added. `since` inclusive, `until` exclusive.
        `billed` is the exact sum (of integer units), as the float nearest to it."""
        groups = list(group_by)
        unknown = [g for g in groups if g not in _GROUPS]
        if unknown:
            raise ValueError(f"unknown group_by {unknown}; choose from {sorted(_GROUPS)}")
        keys = [f'{_GROUPS[g]} AS "{g}"' for g in groups] + ["currency"]
        group_sql = ", ".join(str(i + 1) for i in range(len(keys)))  # by position
        where, params = _window(since, until)
        sql = (f"SELECT {', '.join(keys)}, COUNT(*) AS requests, SUM(prompt_tokens) AS prompt_tokens, "
               "SUM(cached_tokens) AS cached_tokens, SUM(completion_tokens) AS completion_tokens, "
               "SUM(reasoning_tokens) AS reasoning_tokens, SUM(billed_units) AS billed, "
               "AVG(latency_s) AS mean_latency_s, MIN(created - latency_s) AS first_start, "
               "MAX(created) AS last_end "
               f"FROM requests {where} GROUP BY {group_sql} ORDER BY {group_sql}")
        with self._lock:
            cur = self._conn.execute(sql, params)
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, row)) for row in cur.fetchall()]
        for r in rows:
            r["billed"] = to_float(from_units(r["billed"]))
        return rows

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _window(since: float | datetime | None, until: float | datetime | None) -> tuple[str, list[float]]:
    clauses, params = [], []
    if (s := _unix(since)) is not None:
        clauses.append("created >= ?")
        params.append(s)
    if (u := _unix(until)) is not None:
        clauses.append("created < ?")
        params.append(u)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def to_csv(rows: list[dict[str, Any]], file: str | Path | TextIO) -> None:
    """Write summary (or entry) dicts as CSV with a header row."""
    if isinstance(file, (str, Path)):
        with open(file, "w", newline="") as f:
            to_csv(rows, f)
        return
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    writer = csv.DictWriter(file, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
