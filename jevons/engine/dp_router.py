"""Which data-parallel replica gets a request: the one that most likely holds
the longest prefix of its prompt in its prefix cache, unless that replica is
much busier than the least busy one (SGLang's cache-aware policy).

The router keeps its own record of what it sent where (the chained hashes
of each prompt's full blocks, per replica, bounded by LRU), rather than
reading the replicas' caches: those belong to their engine threads (or
processes). The record can be stale (a replica evicts blocks), which costs a
prefix-cache miss, never a wrong answer.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from jevons.engine.block_hash import hash_block


class PrefixAffinityRouter:
    def __init__(self, num_replicas: int, block_size: int = 16, balance_slack: int = 4,
                 max_blocks_per_replica: int = 1 << 16) -> None:
        self.block_size = block_size
        # A replica holding a prefix is preferred while it runs at most this
        # many more requests than the least loaded one.
        self.balance_slack = balance_slack
        self.max_blocks = max_blocks_per_replica
        self.seen: list[OrderedDict[bytes, None]] = [OrderedDict() for _ in range(num_replicas)]
        self.load = [0] * num_replicas  # requests routed and not yet finished
        self._lock = threading.Lock()

    def hashes(self, prompt_ids: Sequence[int]) -> list[bytes]:
        """The chained hashes of the prompt's full blocks."""
        out: list[bytes] = []
        parent = None
        bs = self.block_size
        for start in range(0, len(prompt_ids) - bs + 1, bs):
            parent = hash_block(parent, prompt_ids[start : start + bs])
            out.append(parent)
        return out

    def pick(self, prompt_ids: Sequence[int], alive: Sequence[bool]) -> int:
        """The replica for this prompt (counted as loaded until `done`)."""
        hashes = self.hashes(prompt_ids)
        with self._lock:
            live = [i for i, ok in enumerate(alive) if ok]
            if not live:
                raise RuntimeError("no data-parallel replica is alive")
            least = min(live, key=lambda i: self.load[i])
            best, match = least, 0
            for i in live:
                m = self._match(i, hashes)
                if m > match or (m == match and m > 0 and self.load[i] < self.load[best]):
                    best, match = i, m
            if match == 0 or self.load[best] > self.load[least] + self.balance_slack:
                best = least
            self.load[best] += 1
            self._remember(best, hashes)
            return best

    def done(self, replica: int) -> None:
        with self._lock:
            self.load[replica] = max(0, self.load[replica] - 1)

    def _match(self, i: int, hashes: list[bytes]) -> int:
        n = 0
        for h in hashes:
            if h not in self.seen[i]:
                break
            n += 1
        return n

    def _remember(self, i: int, hashes: list[bytes]) -> None:
        seen = self.seen[i]
        for h in hashes:
            seen[h] = None
            seen.move_to_end(h)
        while len(seen) > self.max_blocks:
            seen.popitem(last=False)
