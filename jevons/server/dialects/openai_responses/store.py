"""Stored responses (`store: true`, the default): what GET /v1/responses/{id}
returns and what `previous_response_id` continues, one SQLite row each.

The file sits beside the usage ledger (`--ledger PATH` -> PATH's folder,
`<stem>-responses.sqlite`), opened as the ledger is (WAL, one connection
behind a lock, commits before the reply). Without a ledger the store lives in
memory and ends with the process, keeping the newest MAX_ROWS_IN_MEMORY.
Rows older than 30 days (OpenAI's retention) are pruned as new ones arrive. A row belongs to the API key that created it
(its key id, auth.key_id): another key reads it as absent, so a 404 tells
nothing about other keys' responses."""
from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jevons.cost.ledger import resolve_ledger_path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    created REAL NOT NULL,
    input_items TEXT NOT NULL,
    response TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created);
"""
# OpenAI keeps a stored response for 30 days; so does this store (pruned as rows are added).
MAX_AGE_S = 30 * 24 * 3600.0
# Without a ledger the store is in memory: the newest rows are kept, so a long-running
# server does not grow without bound.
MAX_ROWS_IN_MEMORY = 10_000


def store_path_beside(ledger: str | Path) -> Path:
    """Where the store lives for a --ledger value: the same folder, `<stem>-responses.sqlite`."""
    p = resolve_ledger_path(ledger)
    return p.with_name(f"{p.stem}-responses.sqlite")


@dataclass(frozen=True)
class StoredResponse:
    id: str
    input_items: list[dict[str, Any]]  # the whole chain's items up to and including this request's input
    response: dict[str, Any]

    def history(self) -> list[dict[str, Any]]:
        """The conversation a follow-up continues: this response's inputs, then its output."""
        return [*self.input_items, *self.response.get("output", [])]


class ResponseStore:
    def __init__(self, path: str | Path | None = None, max_age_s: float = MAX_AGE_S,
                 max_rows: int | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.max_age_s = max_age_s
        self.max_rows = max_rows if max_rows is not None or path is not None else MAX_ROWS_IN_MEMORY
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path or ":memory:", isolation_level=None, check_same_thread=False,
                                     timeout=30.0)
        with self._lock:
            if self.path is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)

    @classmethod
    def for_ledger(cls, ledger: str | None) -> "ResponseStore":
        return cls(store_path_beside(ledger) if ledger else None)

    def put(self, key_id: str, created: float, input_items: list[dict[str, Any]], response: dict[str, Any]) -> None:
        """Store one response (`created`: unix seconds, also the clock pruning reads)."""
        row = (response["id"], key_id, created, json.dumps(input_items), json.dumps(response))
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)", row)
                self._conn.execute("DELETE FROM responses WHERE created < ?", (created - self.max_age_s,))
                if self.max_rows is not None:
                    self._conn.execute("DELETE FROM responses WHERE id IN (SELECT id FROM responses "
                                       "ORDER BY created DESC LIMIT -1 OFFSET ?)", (self.max_rows,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def get(self, response_id: str, key_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._conn.execute("SELECT input_items, response FROM responses WHERE id = ? AND key_id = ?",
                                     (response_id, key_id)).fetchone()
        if row is None:
            return None
        return StoredResponse(response_id, json.loads(row[0]), json.loads(row[1]))

    def delete(self, response_id: str, key_id: str) -> bool:
        with self._lock:
            cur = self._conn.execute("DELETE FROM responses WHERE id = ? AND key_id = ?", (response_id, key_id))
        return cur.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()
