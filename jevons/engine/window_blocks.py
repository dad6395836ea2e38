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

A second, shorter lane (`short_blocks`, `short_retain`) is the same thing
again in its own pool, for caches needed over fewer tokens: DeepSeek-V4's
CSA compressor inputs, read only for the last 2m - 1 = 7 tokens, would
otherwise be kept as long as the 127-token window. Its run follows the first
lane's in the table, offset past both pools' first; a request gets blocks
in every lane or in none, and a prefix hit must be usable in every lane.
"""
from __future__ import annotations

from dataclasses import dataclass

from jevons.engine.block_pool import Block, BlockPool


@dataclass(frozen=True)
class WindowSpec:
    num_blocks: int  # blocks in the window pool
    retain: int  # tokens before a step's first token whose window entries it reads
    short_blocks: int = 0  # blocks in the second lane's pool (0: no second lane)
    short_retain: int = 0  # ... and the tokens it keeps

    def lanes(self) -> list["WindowSpec"]:
        first = WindowSpec(self.num_blocks, self.retain)
        return [first, WindowSpec(self.short_blocks, self.short_retain)] if self.short_blocks else [first]


class WindowBlocks:
    """Every lane of a WindowSpec; `pool` and `first_needed` are the first lane's."""

    def __init__(self, spec: WindowSpec, block_size: int, enable_caching: bool) -> None:
        self.spec = spec
        self.lanes = [WindowLane(lane, block_size, enable_caching) for lane in spec.lanes()]
        self.pool = self.lanes[0].pool

    def first_needed(self, start_token: int) -> int:
        return self.lanes[0].first_needed(start_token)

    def usable_hit(self, hashes: list[bytes], k: int) -> int:
        """The longest prefix of k main-block hits usable in every lane."""
        while True:
            cut = k
            for lane in self.lanes:
                cut = lane.usable_hit(hashes, cut)
            if cut == k:
                return k
            k = cut

    def ensure(self, rid: str, start_token: int, num_main: int, hashes: list[bytes], num_cached: int) -> bool:
        """Every lane's blocks for a step from start_token, or (releasing what
        each lane no longer needs, and nothing else) False."""
        plans = [lane.plan(rid, start_token, num_main, hashes, num_cached) for lane in self.lanes]
        if any(p is None for p in plans):
            return False
        for lane, plan in zip(self.lanes, plans):
            lane.take(rid, *plan)
        return True

    def cache(self, rid: str, hashes: list[bytes], n_full: int) -> None:
        for lane in self.lanes:
            lane.cache(rid, hashes, n_full)

    def trim(self, rid: str, keep: int) -> None:
        for lane in self.lanes:
            lane.trim(rid, keep)

    def free(self, rid: str) -> None:
        for lane in self.lanes:
            lane.free(rid)

    def table_suffix(self, rid: str, offset: int) -> list[int]:
        """Each lane's run, each offset past the pools before it."""
        ids: list[int] = []
        for lane in self.lanes:
            ids += lane.table_suffix(rid, offset)
            offset += lane.pool.num_blocks
        return ids

    def reset(self) -> None:
        for lane in self.lanes:
            lane.reset()
        self.pool = self.lanes[0].pool

    @property
    def num_free(self) -> int:
        return sum(lane.pool.num_free for lane in self.lanes)

    @property
    def num_blocks(self) -> int:
        return sum(lane.pool.num_blocks for lane in self.lanes)


class WindowLane:
    """One pool of window blocks and the tokens it keeps."""

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

    def plan(self, rid: str, start_token: int, num_main: int, hashes: list[bytes], num_cached: int
             ) -> tuple[int, list[Block], list[Block], int] | None:
        """For window blocks of main blocks [first_needed(start_token),
        num_main): release the ones before (done here), find cached ones for
        prefix hits (main blocks below num_cached) and count the rest. None
        when the pool can't provide them; else what `take` needs."""
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
                self._runs[rid] = (have_from, have)
                return None
            hits.append(block)
        need = num_main - end - len(hits)
        reclaim = sum(1 for b in hits if b.ref_count == 0)
        self._runs[rid] = (have_from, have)
        if need + reclaim > self.pool.num_free:
            return None
        return have_from, have, hits, need

    def take(self, rid: str, have_from: int, have: list[Block], hits: list[Block], need: int) -> None:
        self.pool.touch(hits)
        self._runs[rid] = (have_from, have + hits + self.pool.allocate(max(need, 0)))

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
