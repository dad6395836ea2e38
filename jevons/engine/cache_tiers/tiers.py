"""The prefix cache's tiers below the device pool: host RAM, then disk.

Policy:
- Device -> host on eviction: when the pool reuses a cached block, its
  contents are copied to the host tier first (if there is one).
- Device -> disk by write-through: every block that becomes full and
  computed is queued for disk as soon as it is cached, not when it is
  evicted. Write-on-evict would write less, but a prefix that is still on
  the device when the process stops (the common case for a hot system
  prompt) would never reach the disk, and "a repeated prompt is a hit after
  a restart" is the point of the tier. The cost is one device->host copy of
  each new block in the step loop; the file write happens on the writer
  thread, and identical blocks are written once.
- Lookup continues the hash chain past the last device hit: host first, then
  disk (its write buffer, then its files), stopping at the first miss, since
  a block is only usable if all blocks before it are.
"""
from __future__ import annotations

import logging

import torch

from jevons.config import CacheConfig
from jevons.engine.block_pool import Block
from jevons.engine.cache_tiers.disk_cache import DiskCache
from jevons.engine.cache_tiers.host_cache import HostCache
from jevons.engine.cache_tiers.kv_transfer import BlockTransfer

log = logging.getLogger("jevons")


class CacheTiers:
    def __init__(self, transfer: BlockTransfer, host: HostCache | None, disk: DiskCache | None) -> None:
        self.transfer = transfer
        self.host = host
        self.disk = disk

    def on_evict(self, block: Block) -> None:
        """The pool is about to overwrite a cached block: keep a copy in RAM."""
        if self.host is None or block.block_hash is None:
            return
        if self.host.get(block.block_hash) is None:
            self.host.put(block.block_hash, self.transfer.read([block.block_id])[0])

    def on_cached(self, blocks: list[Block]) -> None:
        """Blocks just became full and computed: write them through to disk."""
        if self.disk is None:
            return
        new = [b for b in blocks if b.block_hash not in self.disk]
        self.disk.touch([b.block_hash for b in blocks if b.block_hash in self.disk])
        for b, payload in zip(new, self.transfer.read([b.block_id for b in new])):
            self.disk.put(b.block_hash, payload)

    def on_hit(self, blocks: list[Block]) -> None:
        """A request attached these device blocks: they are recently used on disk too."""
        if self.disk is not None:
            self.disk.touch([b.block_hash for b in blocks if b.block_hash is not None])

    def has(self, block_hash: bytes) -> bool:
        """Whether a lower tier claims the block (a read may still find it corrupt)."""
        return (self.host is not None and block_hash in self.host) or (
            self.disk is not None and block_hash in self.disk)

    def prefetch(self, hashes: list[bytes]) -> None:
        """Start reading these blocks' files in the background (those not in RAM)."""
        if self.disk is not None:
            self.disk.prefetch([h for h in hashes if self.host is None or h not in self.host])

    def fetch(self, block_hash: bytes, block_id: int) -> str | None:
        """Fill device block block_id with the block's contents from the host
        or disk tier; the tier's name, or None (then the block holds garbage)."""
        payload = self.host.get(block_hash) if self.host is not None else None
        if payload is not None:
            self.transfer.write(block_id, payload)
            return "host"
        if self.disk is None:
            return None
        if self.transfer.direct:  # straight from the file into the cache
            return "disk" if self.disk.read_into(block_hash, self.transfer.block_views(block_id)) else None
        payload = self.disk.get(block_hash)
        if payload is None:
            return None
        self.transfer.write(block_id, payload)
        return "disk"

    def stats(self) -> dict[str, float]:
        out = self.empty_stats()
        if self.host is not None:
            out.update(host_cache_bytes=self.host.bytes_used, prefix_cache_evictions_host=self.host.evictions)
        if self.disk is not None:
            d = self.disk
            out.update(
                disk_cache_bytes=d.bytes_on_disk, disk_cache_files=d.num_files, disk_cache_writes=d.writes,
                disk_cache_corrupt=d.corrupt, disk_cache_dropped_writes=d.dropped,
                prefix_cache_evictions_disk=d.evictions,
            )
        return out

    @staticmethod
    def empty_stats() -> dict[str, float]:
        """Every key stats() reports, at zero (the metrics' shape never changes)."""
        keys = ("host_cache_bytes", "prefix_cache_evictions_host", "disk_cache_bytes", "disk_cache_files",
                "disk_cache_writes", "disk_cache_corrupt", "disk_cache_dropped_writes",
                "prefix_cache_evictions_disk")
        return dict.fromkeys(keys, 0)

    def flush(self, timeout: float | None = None) -> bool:
        return self.disk.flush(timeout) if self.disk is not None else True

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()


def build_cache_tiers(
    cfg: CacheConfig, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], fingerprint: bytes
) -> CacheTiers | None:
    """The tiers cfg asks for, or None when the device pool is the only one."""
    if not cfg.enable_prefix_caching or (cfg.cpu_cache_bytes <= 0 and not cfg.disk_cache_dir):
        return None
    transfer = BlockTransfer(kv_caches)
    host = HostCache(cfg.cpu_cache_bytes) if cfg.cpu_cache_bytes > 0 else None
    disk = None
    if cfg.disk_cache_dir:
        disk = DiskCache(cfg.disk_cache_dir, fingerprint, transfer.payload_bytes, cfg.disk_cache_bytes)
        log.info(
            "disk KV cache: %s (%d blocks cached, %.1f of %.1f MiB; %.1f KiB per block)",
            disk.dir, disk.num_files, disk.bytes_on_disk / 2**20, cfg.disk_cache_bytes / 2**20,
            disk.file_bytes / 1024,
        )
    if host is not None:
        blocks = host.max_bytes // transfer.payload_bytes
        log.info("host KV cache: %.1f MiB (%d blocks)", host.max_bytes / 2**20, blocks)
    return CacheTiers(transfer, host, disk)
