"""A writer thread in front of the Ledger that commits rows in groups.

Each request's row must be committed before its response goes out, which costs
one fsync. Concurrent requests that finish together need not pay one fsync
each: the writer takes every entry queued while the previous commit ran and
commits them in one transaction (group commit), then resolves each caller's
future. A lone request still gets its own commit at once; under load the
number of fsyncs per second stays bounded while throughput grows.

`submit` never blocks, so async code awaits the returned future (wrapped with
asyncio.wrap_future) and code that cannot wait (a stream cancelled by a
disconnect) just submits. `close` writes whatever is queued before it returns.
"""
from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future

from jevons.cost.ledger import Ledger, LedgerEntry

log = logging.getLogger("jevons.cost")

_STOP = object()


class LedgerWriter:
    def __init__(self, ledger: Ledger, max_batch: int = 256) -> None:
        self.ledger = ledger
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="jevons-ledger", daemon=True)
        self._thread.start()

    def submit(self, entry: LedgerEntry) -> "Future[None]":
        """Queue one row; the future completes once it is committed (or failed)."""
        fut: Future[None] = Future()
        with self._close_lock:
            if self._closed:
                fut.set_exception(RuntimeError("the ledger is closed"))
                return fut
            self._queue.put((entry, fut))
        return fut

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while len(batch) < self.max_batch:  # everything that queued up meanwhile
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[LedgerEntry, "Future[None]"]]) -> None:
        try:
            self.ledger.record_many([e for e, _ in batch])
        except BaseException as e:  # report to every waiter; the thread keeps serving
            log.exception("ledger write of %d row(s) failed", len(batch))
            for _, fut in batch:
                fut.set_exception(e)
            return
        for _, fut in batch:
            fut.set_result(None)

    def close(self, timeout: float | None = 30.0) -> None:
        """Commit what is queued, stop the thread, close the ledger."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the ledger writer did not finish within %ss; closing anyway", timeout)
            return  # closing the connection under a running commit would lose it
        self.ledger.close()
