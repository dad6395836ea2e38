"""Ledger: SQLite WAL, summaries, CSV, threads, and no acknowledged row lost on kill -9."""
import csv
import json
import math
import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from jevons.cost.ledger import Ledger, LedgerEntry, to_csv

ROOT = Path(__file__).resolve().parents[1]
DAY = 1740787200.0  # 2025-03-01T00:00:00Z


def entry(i: int, key: str = "k1", model: str = "deepseek-r1", created: float = DAY, billed: float = 0.01) -> LedgerEntry:
    return LedgerEntry(request_id=f"req-{i}", key_id=key, model=model, prompt_tokens=100,
                       cached_tokens=60, completion_tokens=40, reasoning_tokens=10, billed=billed,
                       currency="USD", latency_s=2.0, finish_reason="stop", created=created)


def test_wal_mode_and_roundtrip(tmp_path):
    with Ledger(tmp_path / "l.db") as led:
        led.record(entry(1))
        assert led.entries() == [entry(1)]
    con = sqlite3.connect(tmp_path / "l.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_summarize_groups_and_window(tmp_path):
    with Ledger(tmp_path / "l.db") as led:
        led.record_many([
            entry(1, "a", "m1", DAY + 10), entry(2, "a", "m1", DAY + 20),
            entry(3, "b", "m1", DAY + 30), entry(4, "a", "m2", DAY + 86400 + 5),
        ])
        rows = led.summarize()
        assert [(r["key"], r["model"], r["day"], r["requests"]) for r in rows] == [
            ("a", "m1", "2025-03-01", 2), ("a", "m2", "2025-03-02", 1), ("b", "m1", "2025-03-01", 1)]
        assert rows[0]["billed"] == pytest.approx(0.02) and rows[0]["cached_tokens"] == 120
        total = led.summarize(())
        assert len(total) == 1 and total[0]["requests"] == 4 and total[0]["reasoning_tokens"] == 40
        by_model = led.summarize(["model"], since=DAY, until=DAY + 86400)
        assert [(r["model"], r["requests"]) for r in by_model] == [("m1", 3)]
        since_dt = datetime(2025, 3, 2, tzinfo=timezone.utc)
        assert led.summarize(["key"], since=since_dt)[0]["requests"] == 1
        with pytest.raises(ValueError):
            led.summarize(["week"])


def test_currencies_are_never_summed(tmp_path):
    with Ledger(tmp_path / "l.db") as led:
        led.record(entry(1))
        led.record(LedgerEntry(**{**entry(2).__dict__, "currency": "CNY", "billed": 1.0}))
        rows = led.summarize(["model"])
        assert sorted((r["currency"], r["requests"]) for r in rows) == [("CNY", 1), ("USD", 1)]


def test_to_csv(tmp_path):
    with Ledger(tmp_path / "l.db") as led:
        led.record_many([entry(1), entry(2, "k2")])
        rows = led.summarize(["key"])
    buf = io.StringIO()
    to_csv(rows, buf)
    parsed = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [r["key"] for r in parsed] == ["k1", "k2"] and parsed[0]["requests"] == "1"
    to_csv(rows, tmp_path / "out.csv")
    assert open(tmp_path / "out.csv", newline="").read() == buf.getvalue()


def test_threads_share_one_ledger(tmp_path):
    led = Ledger(tmp_path / "l.db", synchronous="NORMAL")
    def work(t: int) -> None:
        for i in range(25):
            led.record(entry(t * 1000 + i, key=f"t{t}"))
    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(r["requests"] for r in led.summarize(["key"])) == 200
    assert len({e.request_id for e in led.entries()}) == 200
    led.close()


_WRITER = """
import sys
from jevons.cost.ledger import Ledger, LedgerEntry
led = Ledger(sys.argv[1])
for i in range(1_000_000):
    led.record(LedgerEntry(f"req-{i}", "k", "m", 10, 5, 3, 1, 0.001, "USD", 0.5, "stop", 1740787200.0 + i))
    # Acknowledge only after record() returned, as the server sends a response.
    print(i, flush=True)
"""


def test_kill_9_loses_no_acknowledged_entry(tmp_path):
    db = tmp_path / "ledger.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE,
                            text=True, env=env)
    acked: list[int] = []
    deadline = time.monotonic() + 20
    try:
        while len(acked) < 150 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-write, most likely mid-commit
        rest, _ = proc.communicate(timeout=10)
    acked += [int(x) for x in rest.split()]  # acknowledged before the kill, still in the pipe
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 150, "writer too slow or died"
    with Ledger(db) as led:  # reopening replays the WAL
        stored = {e.request_id for e in led.entries()}
    missing = [i for i in acked if f"req-{i}" not in stored]
    assert missing == []
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sum_of_many_small_costs_is_exact(tmp_path):
    # 0.1 added ten times is 0.9999999999999999 in floats; the ledger adds integers.
    assert sum([0.1] * 10) != 1.0 and sum([2.234e-05] * 1000) != 0.02234
    with Ledger(tmp_path / "l.db") as led:
        led.record_many([entry(i, "a", billed=0.1) for i in range(10)])
        led.record_many([entry(100 + i, "b", billed=Decimal("0.00002234")) for i in range(1000)])
        by_key = {r["key"]: r["billed"] for r in led.summarize(["key"])}
        assert by_key == {"a": 1.0, "b": 0.02234}
        assert json.dumps(by_key) == '{"a": 1.0, "b": 0.02234}'  # the JSON text is exact
        total = led.summarize(())[0]["billed"]
        assert total == 1.02234 and repr(total) == "1.02234"
        assert {e.billed for e in led.entries()} == {0.1, 2.234e-05}
        assert {e.billed_units for e in led.entries()} == {10**9, 223_400}


_OLD_SCHEMA = """
CREATE TABLE requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, key_id TEXT NOT NULL,
    model TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL, billed REAL NOT NULL,
    currency TEXT NOT NULL, latency_s REAL NOT NULL, finish_reason TEXT NOT NULL, created REAL NOT NULL
);
"""


def test_a_ledger_of_floats_is_migrated(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(_OLD_SCHEMA)
    noisy = math.nextafter(2.234e-05, 1)  # binary noise, as the first schema stored amounts
    assert repr(noisy) == "2.2340000000000003e-05"
    con.executemany("INSERT INTO requests (request_id, key_id, model, prompt_tokens, cached_tokens, "
                    "completion_tokens, reasoning_tokens, billed, currency, latency_s, finish_reason, created) "
                    "VALUES (?, 'k', 'm', 1, 0, 1, 0, ?, 'USD', 0.5, 'stop', ?)",
                    [(f"old-{i}", noisy, DAY) for i in range(1000)])
    con.commit()
    con.close()
    with Ledger(db) as led:
        assert led.summarize(())[0]["billed"] == 0.02234
        led.record(entry(1, billed=0.01))
        assert [e.billed for e in led.entries()][-2:] == [2.234e-05, 0.01]
    with Ledger(db) as led:  # opening again does not migrate twice
        assert led.summarize(())[0]["billed"] == 0.03234
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    # The REAL column is still written, for readers of the first schema.
    assert con.execute("SELECT billed FROM requests WHERE request_id = 'req-1'").fetchone()[0] == 0.01


def test_usage_cli_prints_exact_amounts(tmp_path):
    from argparse import Namespace

    from jevons.cost.usage_cli import run_usage

    db = tmp_path / "l.db"
    with Ledger(db) as led:
        led.record_many([entry(i, billed=Decimal("0.0000000123")) for i in range(3)])
    args = Namespace(ledger=str(db), by="key", since=None, until=None, csv=None, json=False, usd_per_hour=None)
    out = io.StringIO()
    assert run_usage(args, out) == 0
    assert "0.0000000369" in out.getvalue()  # every digit, not rounded to 6 places
    out = io.StringIO()
    assert run_usage(Namespace(**{**vars(args), "json": True}), out) == 0
    assert json.loads(out.getvalue())[0]["billed"] == 3.69e-08 and "3.69e-08" in out.getvalue()
