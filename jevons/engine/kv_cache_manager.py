"""Per-request block tables over the shared BlockPool, with prefix reuse.

Blocks are allocated as a sequence grows, never reserved for its whole length:
that is what lets many more sequences share the cache than their worst case
would allow, at the price of preemption when the pool runs dry.
"""
from __future__ import annotations

from jevons.engine.block_hash import extend_block_hashes
from jevons.engine.block_pool import Block, BlockPool
from jevons.engine.request import Request


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True, extra_key: bytes = b"") -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks, enable_caching)
        self.enable_caching = enable_caching
        self.extra_key = extra_key
        self._blocks: dict[str, list[Block]] = {}
        # Counters for metrics: queried and hit prompt tokens.
        self.prefix_queries = 0
        self.prefix_hits = 0

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    def block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self._blocks.get(request_id, ())]

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def find_cached_prefix(self, req: Request) -> list[Block]:
        """The longest run of cached full blocks at the start of req's tokens.

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
        return hits

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
        self.pool.touch(cached)
        new = self.pool.allocate(max(need, 0))
        self._blocks[req.request_id] = have + cached + new
        return True

    def cache_computed_blocks(self, req: Request) -> None:
        """Register every block of req that is now full and computed."""
        if not self.enable_caching:
            return
        blocks = self._blocks.get(req.request_id, [])
        n_full = min(req.num_computed_tokens // self.block_size, len(blocks))
        extend_block_hashes(req.block_hashes, req.all_token_ids[: n_full * self.block_size], self.block_size, self.extra_key)
        for i in range(n_full):
            if blocks[i].block_hash is None:
                self.pool.cache_block(blocks[i], req.block_hashes[i])

    def free(self, req: Request) -> None:
        blocks = self._blocks.pop(req.request_id, [])
        self.pool.free(list(reversed(blocks)))

    def usage(self) -> float:
        return self.pool.usage()
