"""The pool of fixed-size KV blocks: reference counts, a free list that doubles
as the prefix cache's LRU, and the hash -> block map.

A block whose count drops to zero goes to the tail of the free list but keeps
its contents and hash: until someone allocates it for new tokens, a request
with the same prefix can take it back (a cache hit). Allocation always takes
the head of the list, the least recently freed block. When that evicts a
cached block, `on_evict` sees it first (while its contents are intact), so
that a lower cache tier can keep a copy.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None
    # The tier ("host" | "disk") this block's contents were just loaded from;
    # cleared when a request first attaches it, so each load counts one hit.
    origin: str | None = None


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # block_id -> None, in LRU order (head is evicted first).
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[bytes, int] = {}
        self.evictions = 0
        # Called with each cached block about to be overwritten (canonical
        # copies only: a duplicate's contents are still cached elsewhere).
        self.on_evict: Callable[[Block], None] | None = None

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks

    def lookup(self, block_hash: bytes) -> Block | None:
        bid = self._cached.get(block_hash)
        return None if bid is None else self.blocks[bid]

    def allocate(self, n: int) -> list[Block]:
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} blocks with {len(self._free)} free")
        out = []
        for _ in range(n):
            bid, _ = self._free.popitem(last=False)
            block = self.blocks[bid]
            if block.block_hash is not None:
                # Reusing a cached block for new tokens evicts its old contents.
                if self._cached.get(block.block_hash) == bid:
                    if self.on_evict is not None:
                        self.on_evict(block)
                    del self._cached[block.block_hash]
                block.block_hash = None
                self.evictions += 1
            block.origin = None
            block.ref_count = 1
            out.append(block)
        return out

    def touch(self, blocks: list[Block]) -> None:
        """Take a reference on cached blocks that a new request reuses."""
        for block in blocks:
            if block.ref_count == 0:
                self._free.pop(block.block_id, None)
            block.ref_count += 1

    def free(self, blocks: list[Block]) -> None:
        """Drop one reference from each block; callers pass a sequence's blocks
        tail first so that its last blocks are evicted before its shared prefix."""
        for block in blocks:
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block.block_id} freed twice"
            if block.ref_count == 0:
                if block.block_hash is None or not self.enable_caching:
                    block.block_hash = None
                    # Never-cached blocks are reused first, before cached ones.
                    self._free[block.block_id] = None
                    self._free.move_to_end(block.block_id, last=False)
                else:
                    self._free[block.block_id] = None

    def cache_block(self, block: Block, block_hash: bytes) -> bool:
        """Key a full block by its hash. Returns whether it became the canonical
        copy (False when caching is off, it was keyed already, or an identical
        block is cached)."""
        if not self.enable_caching or block.block_hash is not None:
            return False
        block.block_hash = block_hash
        # First writer wins: an identical block already cached stays canonical.
        return self._cached.setdefault(block_hash, block.block_id) == block.block_id

    def reset_prefix_cache(self) -> None:
        for bid in list(self._cached.values()):
            self.blocks[bid].block_hash = None
        self._cached.clear()
