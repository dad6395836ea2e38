"""The stored-responses table on its own: per-key visibility, pruning by age
(30 days, measured from the newest row's time, never the wall clock) and by
count for the in-memory store."""
from __future__ import annotations

from jevons.server.dialects.openai_responses.store import ResponseStore

DAY = 24 * 3600.0


def resp(i: int) -> dict:
    return {"id": f"resp_{i}", "output": [{"type": "message", "content": [{"type": "output_text", "text": str(i)}]}]}


def test_per_key_get_and_delete(tmp_path):
    store = ResponseStore(tmp_path / "r.sqlite")
    store.put("alice", 1.0, [{"type": "message", "role": "user", "content": "hi"}], resp(1))
    assert store.get("resp_1", "bob") is None and not store.delete("resp_1", "bob")
    got = store.get("resp_1", "alice")
    assert got.history() == [{"type": "message", "role": "user", "content": "hi"}, *resp(1)["output"]]
    assert store.delete("resp_1", "alice") and store.get("resp_1", "alice") is None
    store.close()


def test_rows_older_than_30_days_are_pruned(tmp_path):
    store = ResponseStore(tmp_path / "r.sqlite")
    store.put("k", 0.0, [], resp(0))
    store.put("k", 29 * DAY, [], resp(1))
    assert store.get("resp_0", "k") is not None
    store.put("k", 31 * DAY, [], resp(2))
    assert store.get("resp_0", "k") is None and store.get("resp_1", "k") is not None
    store.close()


def test_memory_store_keeps_the_newest_rows():
    store = ResponseStore(max_rows=3)
    for i in range(5):
        store.put("k", float(i), [], resp(i))
    assert [store.get(f"resp_{i}", "k") is not None for i in range(5)] == [False, False, True, True, True]
    assert ResponseStore().max_rows == 10_000  # without a ledger: in memory, bounded
