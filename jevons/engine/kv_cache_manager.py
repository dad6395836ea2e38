"""Per-request block tables over the shared BlockPool, with prefix reuse.

Blocks are allocated as a sequence grows, never reserved for its whole length:
that is what lets many more sequences share the cache than their worst case
would allow, at the price of preemption when the pool runs dry.

Prefix lookup walks the request's hash chain through the device pool and then
through the lower tiers (host RAM, disk). Blocks found below the device are
copied into free device blocks right away and registered there as cached but
unreferenced, exactly like a device hit: the scheduler needs no notion of
tiers, and if the request can't be admitted this step, the next attempt finds
them on the device instead of reading the disk again.
"""
from __future__ import annotations

import logging

from jevons.engine.block_hash import extend_block_hashes
from jevons.engine.block_pool import Block, BlockPool
from jevons.engine.cache_tiers import CacheTiers
from jevons.engine.request import Request
from jevons.engine.window_blocks import WindowBlocks, WindowSpec

log = logging.getLogger("jevons")

TIERS = ("device", "host", "disk")


class KVCacheManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_caching: bool = True,
        extra_key: bytes = b"",
        tiers: CacheTiers | None = None,
        window: WindowSpec | None = None,
    ) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks, enable_caching)
        self.enable_caching = enable_caching
        self.extra_key = extra_key
        self._blocks: dict[str, list[Block]] = {}
        # Per-token caches kept only near a sequence's end (engine/window_blocks.py).
        self.window = None if window is None else WindowBlocks(window, block_size, enable_caching)
        # Counters for metrics: queried and hit prompt tokens, and hits by tier.
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.tier_hits = dict.fromkeys(TIERS, 0)
        self.tiers: CacheTiers | None = None
        self.attach_tiers(tiers)

    def attach_tiers(self, tiers: CacheTiers | None) -> None:
        """Put host/disk tiers under the device pool (before any request runs)."""
        self.tiers = tiers if self.enable_caching else None
        self.pool.on_evict = None if self.tiers is None else self.tiers.on_evict

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    def block_ids(self, request_id: str) -> list[int]:
        ids = [b.block_id for b in self._blocks.get(request_id, ())]
        if self.window is not None:  # the window run after the main ids, offset past them
            ids += self.window.table_suffix(request_id, self.num_blocks)
        return ids

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def find_cached_prefix(self, req: Request) -> list[Block]:
        """The longest run of cached full blocks at the start of req's tokens,
        loaded into the device pool if they came from a lower tier.

        At least one token is always left to compute: the last position's
        logits are needed to sample."""
        if not self.enable_caching:
            return []
        extend_block_hashes(req.block_hashes, req.all_token_ids, self.block_size, self.extra_key)
        limit = (req.num_tokens - 1) // self.block_size
        hits: list[Block] = []
        for h in req.block_hashes[:limit]:
            block = self.pool.lookup(h)
            if block is None:
                break
            hits.append(block)
        if self.tiers is not None and len(hits) < limit:
            hits += self._load_from_tiers(req.block_hashes[len(hits) : limit], hits)
        if self.window is not None:
            hits = hits[: self.window.usable_hit(req.block_hashes, len(hits))]
        return hits

    def _load_from_tiers(self, hashes: list[bytes], device_hits: list[Block]) -> list[Block]:
        assert self.tiers is not None
        # Hold the device hits (and each loaded block) while allocating, so that
        # making room can't evict the start of the very prefix being built.
        self.pool.touch(device_hits)
        loaded: list[Block] = []
        try:
            # Check first: allocating evicts a device block, worth it only for a likely hit.
            n, limit = 0, min(len(hashes), self.pool.num_free)
            while n < limit and self.tiers.has(hashes[n]):
                n += 1
            self.tiers.prefetch(hashes[:n])
            for h in hashes[:n]:
                block = self.pool.allocate(1)[0]
                tier = self.tiers.fetch(h, block.block_id)
                if tier is None:  # corrupt or gone: the chain ends here
                    self.pool.free([block])
                    break
                self.pool.cache_block(block, h)
                block.origin = tier
                loaded.append(block)
            return loaded
        finally:
            # Unreferenced but cached, at the LRU's young end: the caller
            # attaches them like any device hit.
            self.pool.free(list(reversed(loaded)))
            self.pool.free(list(reversed(device_hits)))

    def allocate(self, req: Request, num_new_tokens: int, cached: list[Block] | None = None) -> bool:
        """Make room for req's next num_new_tokens (after any cached prefix).
        Returns False, changing nothing, when the pool can't provide it."""
        cached = cached or []
        have = self._blocks.get(req.request_id, [])
        total = req.num_computed_tokens + len(cached) * self.block_size + num_new_tokens
        need = self.blocks_needed(total) - len(have) - len(cached)
        # Cached blocks sitting in the free list stop being free once taken.
        reclaim = sum(1 for b in cached if b.ref_count == 0)
        if need + reclaim > self.pool.num_free:
            return False
        if self.window is not None and not self.window.ensure(
            req.request_id, req.num_computed_tokens + len(cached) * self.block_size,
            len(have) + len(cached) + max(need, 0), req.block_hashes, len(cached),
        ):
            return False
        self.pool.touch(cached)
        new = self.pool.allocate(max(need, 0))
        self._blocks[req.request_id] = have + cached + new
        if cached:
            self._count_hits(cached)
        return True

    def _count_hits(self, cached: list[Block]) -> None:
        for block in cached:
            # A block loaded from a lower tier counts there once; after that
            # it is an ordinary device block.
            self.tier_hits[block.origin or "device"] += self.block_size
            block.origin = None
        if self.tiers is not None:
            self.tiers.on_hit(cached)

    def cache_computed_blocks(self, req: Request) -> None:
        """Register every block of req that is now full and computed."""
        if not self.enable_caching:
            return
        blocks = self._blocks.get(req.request_id, [])
        n_full = min(req.num_computed_tokens // self.block_size, len(blocks))
        extend_block_hashes(req.block_hashes, req.all_token_ids[: n_full * self.block_size], self.block_size, self.extra_key)
        new: list[Block] = []
        for i in range(n_full):
            if blocks[i].block_hash is None and self.pool.cache_block(blocks[i], req.block_hashes[i]):
                new.append(blocks[i])
        if new and self.tiers is not None:
            self.tiers.on_cached(new)
        if self.window is not None:
            self.window.cache(req.request_id, req.block_hashes, n_full)

    def trim(self, req: Request) -> None:
        """Give back blocks past the last one req's tokens need (they held only
        rejected draft tokens, never hashed: hashes cover computed tokens only)."""
        blocks = self._blocks.get(req.request_id)
        keep = self.blocks_needed(req.num_tokens)
        if blocks is not None and len(blocks) > keep:
            self.pool.free(list(reversed(blocks[keep:])))
            del blocks[keep:]
        if self.window is not None:
            self.window.trim(req.request_id, keep)

    def free(self, req: Request) -> None:
        blocks = self._blocks.pop(req.request_id, [])
        self.pool.free(list(reversed(blocks)))
        if self.window is not None:
            self.window.free(req.request_id)

    def usage(self) -> float:
        return self.pool.usage()

    # --- tiers: stats and shutdown ------------------------------------------------
    def cache_stats(self) -> dict[str, float]:
        """Prefix-cache counters by tier (hit tokens, evicted blocks, bytes)."""
        out: dict[str, float] = {f"prefix_cache_hits_{t}": n for t, n in self.tier_hits.items()}
        out["prefix_cache_evictions_device"] = self.pool.evictions
        out.update(CacheTiers.empty_stats() if self.tiers is None else self.tiers.stats())
        return out

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for queued disk writes (tests; a clean exit does it too)."""
        return self.tiers.flush(timeout) if self.tiers is not None else True

    def close(self) -> None:
        if self.tiers is not None:
            self.tiers.close()

    def reset_after_fault(self) -> None:
        """Every block free and no device prefix-cache entry (its contents may
        be what the fault left behind). Lower tiers keep theirs."""
        for rid in list(self._blocks):
            try:
                self.pool.free(list(reversed(self._blocks.pop(rid))))
            except Exception:
                log.exception("while freeing the blocks of %s", rid)
        if self.pool.num_free != self.num_blocks:  # bookkeeping lost: a fresh pool
            log.warning("rebuilding the block pool (%d of %d blocks were not free)", self.pool.num_free, self.num_blocks)
            on_evict = self.pool.on_evict
            self.pool = BlockPool(self.num_blocks, self.enable_caching)
            self.pool.on_evict = on_evict
            self._blocks.clear()
        self.pool.reset_prefix_cache()
        if self.window is not None:
            self.window.reset()
