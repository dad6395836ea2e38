"""Blocks of per-token caches that a sequence needs only near its end (a
sliding window; DeepSeek-V4's window entries and compressor inputs): a second
block pool beside the main one, released as the sequence moves on.

Each main block of a request may have a window block for the same tokens.
A request holds window blocks for its main blocks from the one holding the
token `retain` before its next step's first token to its last, so they are a
run at the end of its block list. A full, computed window block is keyed by
its main block's hash; released, it stays in the pool's LRU, so a prefix hit
at a point whose last `retain` tokens still have their window blocks can
resume there (find_window_hits), and a hit anywhere else is cut back to such a
point. The runner gets the run after the main ids, offset by the main pool's
size (models/layers/v4_cache.py reads them).
"""
from __future__ import annotations

from dataclasses import dataclass

from jevons.engine.block_pool import Block, BlockPool


@dataclass(frozen=True)
class WindowSpec:
    num_blocks: int  # blocks in the window pool
    retain: int  # tokens before a step's first token whose window entries it reads


class WindowBlocks:
    def __init__(self, spec: WindowSpec, block_size: int, enable_caching: bool) -> None:
        self.spec, self.block_size = spec, block_size
        self.pool = BlockPool(spec.num_blocks, enable_caching)
        # request id -> (index of its first main block with a window block, the window blocks)
        self._runs: dict[str, tuple[int, list[Block]]] = {}

    def first_needed(self, start_token: int) -> int:
        """The first main block whose window entries a step from start_token reads."""
        return max(0, start_token - self.spec.retain) // self.block_size

    def usable_hit(self, hashes: list[bytes], k: int) -> int:
        """The longest prefix of k main-block hits whose last `retain` tokens
        still have window blocks in the pool."""
        while k > 0 and any(self.pool.lookup(h) is None for h in hashes[self.first_needed(k * self.block_size) : k]):
            k -= 1
        return k

    def ensure(self, rid: str, start_token: int, num_main: int, hashes: list[bytes], num_cached: int) -> bool:
        """Window blocks for main blocks [first_needed(start_token), num_main):
        release the ones before, take cached ones for prefix hits (main blocks
        below num_cached), allocate the rest. False, changing nothing but the
        release, when the pool can't provide them."""
        first = self.first_needed(start_token)
        have_from, have = self._runs.get(rid, (first, []))
        drop = max(0, min(first - have_from, len(have)))
        if drop:
            self.pool.free(list(reversed(have[:drop])))
            have, have_from = have[drop:], have_from + drop
        if not have:
            have_from = first
        end = have_from + len(have)
        hits: list[Block] = []
        for i in range(end, min(num_cached, num_main)):
            block = self.pool.lookup(hashes[i])
            if block is None:
                return False
            hits.append(block)
        need = num_main - end - len(hits)
        reclaim = sum(1 for b in hits if b.ref_count == 0)
        if need + reclaim > self.pool.num_free:
            return False
        self.pool.touch(hits)
        self._runs[rid] = (have_from, have + hits + self.pool.allocate(max(need, 0)))
        return True

    def cache(self, rid: str, hashes: list[bytes], n_full: int) -> None:
        """Key the window blocks of the first n_full (full, computed) main blocks."""
        start, run = self._runs.get(rid, (0, []))
        for i, block in enumerate(run):
            if start + i < n_full and block.block_hash is None:
                self.pool.cache_block(block, hashes[start + i])

    def trim(self, rid: str, keep: int) -> None:
        start, run = self._runs.get(rid, (0, []))
        extra = start + len(run) - keep
        if extra > 0 and run:
            extra = min(extra, len(run))
            self.pool.free(list(reversed(run[-extra:])))
            del run[-extra:]

    def free(self, rid: str) -> None:
        _, run = self._runs.pop(rid, (0, []))
        self.pool.free(list(reversed(run)))

    def table_suffix(self, rid: str, offset: int) -> list[int]:
        return [offset + b.block_id for b in self._runs.get(rid, (0, []))[1]]

    def reset(self) -> None:
        for rid in list(self._runs):
            self.free(rid)
        if self.pool.num_free != self.pool.num_blocks:
            self.pool = BlockPool(self.spec.num_blocks, self.pool.enable_caching)
            self._runs.clear()
        self.pool.reset_prefix_cache()
