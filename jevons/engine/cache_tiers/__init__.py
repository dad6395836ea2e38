"""The prefix cache below the device pool: a host-RAM tier, then a disk tier
that survives restarts.

Read in this order: tiers.py (the policy: evict to host, write through to
disk, look up past the last device hit), host_cache.py (an LRU of blocks in
RAM), disk_cache.py (files written by a background thread, bounded by LRU),
disk_format.py (one block per file: header, checksum, payload) and
kv_transfer.py (copying a block's KV between the device and host tensors).
The engine sees only `CacheTiers` and `build_cache_tiers`.
"""
from jevons.engine.cache_tiers.tiers import CacheTiers, build_cache_tiers

__all__ = ["CacheTiers", "build_cache_tiers"]
