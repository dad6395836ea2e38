"""The disk tier: KV blocks as files keyed by their chained hash, bounded in
size by LRU, surviving restarts (DeepSeek's "context caching on disk").

- Layout: <root>/<fingerprint[:32] hex>/<block hash hex>.kv (disk_format.py).
  One folder per model fingerprint, so a different model never even lists
  another's files (and its header is checked anyway).
- Writes happen on a writer thread, never in the step loop: put() only queues
  the payload, which stays readable from memory until its file is complete
  (the write-back buffer). Files are written to a temporary name and renamed,
  so a crash leaves no half-written file under a real key. When the writer
  falls behind by more than max_pending_bytes, new blocks are dropped: the
  cache is best effort and the step loop never waits for the disk.
- LRU by size: every file of one fingerprint has the same size, so the bound
  is a file count. Recency lives in an in-memory order and, for the next
  start, in file mtimes (the writer touches files that get hit).
- At start the index is rebuilt from the folder (wrong-sized files deleted,
  order by mtime). Contents are verified lazily on read: a file that fails is
  deleted and reported as a miss.

One engine process owns a folder at a time; a second one sharing it stays
correct (every read is verified) but the two may evict each other's files.
"""
from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch

from jevons.engine.cache_tiers.disk_format import (
    HEADER_SIZE, prefetch_files, read_block_file, remove_file, touch_file, write_block_file,
)

log = logging.getLogger("jevons")

MAX_PENDING_BYTES = 512 << 20
_SUFFIX = ".kv"
_STALE_TMP_S = 60.0
# A hot prefix is hit on every request; its files' mtimes (the LRU order a
# restart sees) need refreshing only this often.
_TOUCH_EVERY_S = 60.0


class DiskCache:
    def __init__(
        self,
        root: str | Path,
        fingerprint: bytes,
        payload_bytes: int,
        max_bytes: int,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self.dir = Path(root).expanduser().resolve() / fingerprint.hex()[:32]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.payload_bytes = payload_bytes
        self.file_bytes = HEADER_SIZE + payload_bytes
        self.max_bytes = max_bytes
        self.max_files = max_bytes // self.file_bytes
        self.max_pending_bytes = max_pending_bytes
        self._lock = threading.Lock()
        self._index: OrderedDict[bytes, None] = OrderedDict()  # LRU order, head evicted first
        self._pending: dict[bytes, torch.Tensor] = {}
        self._pending_bytes = 0
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._touched: dict[bytes, float] = {}  # when each file's mtime was last refreshed
        self._closed = False
        self.hits = 0
        self.writes = 0
        self.evictions = 0
        self.corrupt = 0
        self.dropped = 0
        self._warned = False
        self._scan()
        self._thread = threading.Thread(target=self._run, name="jevons-disk-writer", daemon=True)
        self._thread.start()
        # A clean exit finishes queued writes (a crash only loses them).
        atexit.register(self.close)

    # --- facts ------------------------------------------------------------------
    @property
    def num_files(self) -> int:
        return len(self._index)

    @property
    def bytes_on_disk(self) -> int:
        return len(self._index) * self.file_bytes

    def path(self, block_hash: bytes) -> Path:
        return self.dir / (block_hash.hex() + _SUFFIX)

    def __contains__(self, block_hash: bytes) -> bool:
        with self._lock:
            return block_hash in self._index or block_hash in self._pending

    # --- step-loop side -------------------------------------------------------------
    def put(self, block_hash: bytes, payload: torch.Tensor) -> bool:
        """Queue a block for writing; False if it is known already or dropped."""
        if self.max_files < 1 or self._closed:
            return False
        with self._lock:
            if block_hash in self._index or block_hash in self._pending:
                return False
            if self._pending_bytes + self.payload_bytes > self.max_pending_bytes:
                self.dropped += 1
                return False
            self._pending[block_hash] = payload
            self._pending_bytes += self.payload_bytes
        self._jobs.put(("write", block_hash))
        return True

    def get(self, block_hash: bytes) -> torch.Tensor | None:
        """The block's payload, verified, or None (missing, unreadable or corrupt)."""
        out = torch.empty(self.payload_bytes, dtype=torch.uint8)
        return out if self.read_into(block_hash, [memoryview(out.numpy())]) else None

    def read_into(self, block_hash: bytes, dest: list[memoryview]) -> bool:
        """Read the block's payload into dest, buffers that together hold
        payload_bytes (e.g. the device cache's own memory for that block, one
        buffer per layer's K or V: a scatter read, no staging copy). False if
        missing, unreadable or corrupt; dest then holds garbage."""
        with self._lock:
            pending = self._pending.get(block_hash)
            on_disk = pending is None and block_hash in self._index
            if on_disk:
                self._index.move_to_end(block_hash)
        if pending is not None:
            _scatter(pending, dest)
            self.hits += 1
            return True
        if not on_disk:
            return False
        path = self.path(block_hash)
        try:
            why = read_block_file(path, self.fingerprint, block_hash, self.payload_bytes, dest)
        except OSError:  # evicted meanwhile, or unreadable
            self._forget(block_hash)
            return False
        if why is not None:
            log.warning("disk KV cache: %s: %s; deleted, recomputing", path.name, why)
            self.corrupt += 1
            self._forget(block_hash)
            remove_file(path)
            return False
        self.hits += 1  # (its recency is recorded when a request attaches it: touch())
        return True

    def prefetch(self, hashes: list[bytes]) -> None:
        """Start reading these blocks' files in the background (a restart after
        a reboot, or files pushed out of the page cache)."""
        prefetch_files([self.path(h) for h in hashes])

    def touch(self, hashes: list[bytes]) -> None:
        """Mark blocks as just used (a device hit), so that a prefix living on
        the device is not the first to go from disk."""
        now = time.monotonic()
        stale = []
        with self._lock:
            for h in hashes:
                if h in self._index:
                    self._index.move_to_end(h)
                    if now - self._touched.get(h, -_TOUCH_EVERY_S) >= _TOUCH_EVERY_S:
                        self._touched[h] = now
                        stale.append(h)
        if stale and not self._closed:
            self._jobs.put(("touch", stale))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued write is on disk."""
        if not self._thread.is_alive():
            return not self._pending
        done = threading.Event()
        self._jobs.put(("flush", done))
        return done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        atexit.unregister(self.close)
        self._closed = True
        if self._thread.is_alive():
            self.flush(timeout)
            self._jobs.put(None)
            self._thread.join(timeout)

    # --- writer thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            kind, arg = job
            try:
                if kind == "write":
                    self._write(arg)
                elif kind == "touch":
                    for h in arg:
                        touch_file(self.path(h))
                else:
                    arg.set()
            except Exception:  # the writer must outlive any one bad job
                log.exception("disk KV cache: writer job %s failed", kind)

    def _write(self, block_hash: bytes) -> None:
        with self._lock:
            payload = self._pending.get(block_hash)
        if payload is None:
            return
        path = self.path(block_hash)
        ok = False
        try:
            write_block_file(path, self.fingerprint, block_hash, memoryview(payload.numpy()))
            ok = True
        except OSError as e:  # disk full, folder removed...: the block just isn't cached
            if not self._warned:
                self._warned = True
                log.warning("disk KV cache: writing %s failed (%s); skipping such blocks", path, e)
        victims: list[bytes] = []
        with self._lock:
            self._pending.pop(block_hash, None)
            self._pending_bytes -= self.payload_bytes
            if ok:
                self.writes += 1
                self._index[block_hash] = None
                while len(self._index) > self.max_files:
                    victim = self._index.popitem(last=False)[0]
                    self._touched.pop(victim, None)
                    victims.append(victim)
        self.evictions += len(victims)
        for h in victims:
            remove_file(self.path(h))

    # --- start-up ----------------------------------------------------------------
    def _scan(self) -> None:
        found: list[tuple[int, bytes]] = []
        now = time.time()
        for entry in os.scandir(self.dir):
            name = entry.name
            try:
                st = entry.stat()
            except OSError:
                continue
            if name.endswith(".tmp"):
                if now - st.st_mtime > _STALE_TMP_S:  # left by a crash, not a live writer
                    remove_file(Path(entry.path))
                continue
            block_hash = _parse_name(name)
            if block_hash is None:
                continue
            if st.st_size != self.file_bytes:  # truncated (or foreign): cheap to catch now
                self.corrupt += 1
                remove_file(Path(entry.path))
                continue
            found.append((st.st_mtime_ns, block_hash))
        found.sort()
        self._index = OrderedDict((h, None) for _, h in found)
        while len(self._index) > self.max_files:  # the bound shrank since last run
            self.evictions += 1
            remove_file(self.path(self._index.popitem(last=False)[0]))

    def _forget(self, block_hash: bytes) -> None:
        with self._lock:
            self._index.pop(block_hash, None)
            self._touched.pop(block_hash, None)


def _parse_name(name: str) -> bytes | None:
    if not name.endswith(_SUFFIX) or len(name) != 64 + len(_SUFFIX):
        return None
    try:
        return bytes.fromhex(name[:64])
    except ValueError:
        return None


def _scatter(src: torch.Tensor, dest: list[memoryview]) -> None:
    """Copy a contiguous payload into buffers laid end to end."""
    off = 0
    for d in dest:
        n = d.nbytes
        torch.frombuffer(d, dtype=torch.uint8).copy_(src[off : off + n])
        off += n
