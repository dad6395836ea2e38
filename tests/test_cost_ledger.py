"""Ledger: SQLite WAL, summaries, CSV, threads, and no acknowledged row lost on kill -9."""
import csv
import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
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
