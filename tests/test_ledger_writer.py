"""LedgerWriter: group commit, futures resolved only after the commit, drain on
close; and where the default ledger lives."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from jevons.cost.ledger import Ledger, LedgerEntry, default_ledger_path, resolve_ledger_path
from jevons.cost.ledger_writer import LedgerWriter


def entry(i: int) -> LedgerEntry:
    return LedgerEntry(f"req-{i}", "anonymous", "m", 10, 4, 3, 1, 0.001, "USD", 0.1, "stop", 1740787200.0 + i)


class SlowLedger(Ledger):
    """Holds the first commit until released, so later entries queue up behind it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def record_many(self, entries):
        entries = list(entries)
        self.entered.set()
        self.release.wait(10)
        super().record_many(entries)
        self.batches.append(len(entries))


def test_queued_entries_share_one_commit(tmp_path):
    led = SlowLedger(tmp_path / "l.db")
    writer = LedgerWriter(led)
    first = writer.submit(entry(0))
    assert led.entered.wait(10)  # the writer is committing entry 0 alone
    rest = [writer.submit(entry(i)) for i in range(1, 21)]
    assert not first.done()  # not acknowledged before its commit
    led.release.set()
    for f in [first, *rest]:
        f.result(10)
    assert led.batches == [1, 20]  # everything that queued meanwhile: one commit
    writer.close()
    with Ledger(tmp_path / "l.db") as again:
        assert [e.request_id for e in again.entries()] == [f"req-{i}" for i in range(21)]


def test_close_drains_and_refuses_later_rows(tmp_path):
    led = SlowLedger(tmp_path / "l.db")
    led.release.set()
    writer = LedgerWriter(led)
    futures = [writer.submit(entry(i)) for i in range(5)]
    writer.close()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(entry(9)).result(1)
    with Ledger(tmp_path / "l.db") as again:
        assert len(again.entries()) == 5


def test_a_failed_commit_reaches_every_waiter(tmp_path):
    class Broken(Ledger):
        def record_many(self, entries):
            raise OSError("disk full")

    writer = LedgerWriter(Broken(tmp_path / "l.db"))
    with pytest.raises(OSError, match="disk full"):
        writer.submit(entry(0)).result(10)
    writer.close()


def test_default_ledger_path(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_ledger_path() == tmp_path / "jevons" / "ledger.sqlite"
    assert resolve_ledger_path("default") == default_ledger_path()
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_ledger_path() == Path.home() / ".local" / "share" / "jevons" / "ledger.sqlite"
    assert resolve_ledger_path("x.db") == Path("x.db")
