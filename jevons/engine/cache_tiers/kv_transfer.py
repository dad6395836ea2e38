"""Copying whole KV blocks between the device cache and host memory.

A block's payload is every layer's cache entry for that block (K then V for
MHA/GQA; the latent for MLA, whose V tensor is empty and skipped), flattened
to raw bytes in one CPU uint8 tensor. Bytes rather than typed tensors keep the
host and disk tiers indifferent to dtype (fp32, bf16, fp8) and layout: the
layout is pinned by the cache fingerprint instead.

This lives in the engine, not the runner: it only needs the list of cache
tensors, whose first dimension is the block id.
"""
from __future__ import annotations

import torch


class BlockTransfer:
    def __init__(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.tensors = [t for pair in kv_caches for t in pair if t.numel() > 0]
        if not self.tensors:
            raise ValueError("the KV cache has no tensors to copy")
        num_blocks = self.tensors[0].shape[0]
        if any(t.shape[0] != num_blocks for t in self.tensors):
            raise ValueError("every KV cache tensor must be indexed by block id first")
        self.num_blocks = num_blocks
        # Bytes each tensor contributes to one block's payload.
        self.sizes = [t[0].numel() * t.element_size() for t in self.tensors]
        self.payload_bytes = sum(self.sizes)
        self.device = self.tensors[0].device
        # In host memory, a file can be read straight into the cache's own
        # pages (block_views); elsewhere it goes through a host buffer.
        self.direct = self.device.type == "cpu" and all(t.is_contiguous() for t in self.tensors)
        # Byte views of each whole tensor, made once: per-block views are then
        # a cheap index, not thousands of tensor ops per load.
        self._bytes = [t.view(num_blocks, -1).view(torch.uint8).numpy() for t in self.tensors] if self.direct else []

    def read(self, block_ids: list[int]) -> list[torch.Tensor]:
        """Payloads of block_ids, one gather per tensor (not per block and layer:
        a prefill chunk caches many blocks in one step)."""
        if not block_ids:
            return []
        idx = torch.tensor(block_ids, dtype=torch.int64, device=self.device)
        out = torch.empty((len(block_ids), self.payload_bytes), dtype=torch.uint8)
        off = 0
        for t, size in zip(self.tensors, self.sizes):
            rows = t.index_select(0, idx).reshape(len(block_ids), -1)
            out[:, off : off + size].copy_(rows.view(torch.uint8))
            off += size
        return list(out.unbind(0))

    def write(self, block_id: int, payload: torch.Tensor) -> None:
        """Fill device block block_id with a payload as read() made it."""
        if payload.dtype != torch.uint8 or payload.numel() != self.payload_bytes:
            raise ValueError(f"a block payload must be {self.payload_bytes} bytes")
        payload = payload.to(self.device)  # one transfer per block, then slices on the device
        off = 0
        for t, size in zip(self.tensors, self.sizes):
            t[block_id].copy_(payload[off : off + size].view(t.dtype).view(t.shape[1:]))
            off += size

    def block_views(self, block_id: int) -> list[memoryview]:
        """The cache's own memory for one block, one writable buffer per
        tensor, in payload order (only when `direct`)."""
        assert self.direct
        return [memoryview(b[block_id]) for b in self._bytes]
