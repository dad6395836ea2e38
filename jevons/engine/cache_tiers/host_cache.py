"""The host-RAM tier: blocks evicted from the device pool, kept as byte
payloads in a bounded LRU until they are needed again or pushed out.

On a GPU this is where the device pool spills first (a PCIe copy back is far
cheaper than recomputing a prefill). On a CPU-only machine the device pool is
already host RAM, so this tier is off by default (size 0): a copy here would
only duplicate memory, and the disk tier's write buffer plays its part.
"""
from __future__ import annotations

from collections import OrderedDict

import torch


class HostCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.bytes_used = 0
        self.evictions = 0

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, block_hash: bytes, payload: torch.Tensor) -> None:
        size = payload.numel()
        if size > self.max_bytes:
            return
        old = self._entries.pop(block_hash, None)
        if old is not None:
            self.bytes_used -= old.numel()
        while self.bytes_used + size > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.bytes_used -= dropped.numel()
            self.evictions += 1
        self._entries[block_hash] = payload
        self.bytes_used += size

    def get(self, block_hash: bytes) -> torch.Tensor | None:
        payload = self._entries.get(block_hash)
        if payload is not None:
            self._entries.move_to_end(block_hash)
        return payload
