"""CUDA graphs for decode steps, in batch-size buckets; prefill stays eager.

A decode step of B requests is B tokens, one per request. Launch overhead
dominates such small steps, so each bucket size is captured once as a CUDA
graph over static input buffers and replayed: copy this step's ids,
positions, slots, block tables and lengths into the buffers, replay, read the
first B rows of the static output.

A step of B rows uses the smallest bucket >= B. The padded rows repeat the
last real row (same token, position, slot and block table), so they compute
exactly what that row computes and their cache write puts identical values in
the same slot: no special "padding" case reaches any kernel, and every
backend (torch reference included) runs the same graph body.

Everything except `capture` works without a GPU: with use_graphs=False the
same static-buffer path runs eagerly, which is how it is tested on CPU.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable

import torch

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.models.forward_context import ForwardContext

# model(input_ids [B], positions [B], ctx) -> hidden [B, H]
ForwardFn = Callable[[torch.Tensor, torch.Tensor, ForwardContext], torch.Tensor]


def decode_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to max_batch (rounded up):
    fine steps where latency matters most, and at most 15 padded rows above."""
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    small = [b for b in (1, 2, 4, 8) if b < max_batch]
    top = -(-max_batch // 16) * 16 if max_batch > 8 else max(max_batch, 1)
    big = list(range(16, top + 1, 16)) if max_batch > 8 else [top]
    return sorted(set(small + big))


def pick_bucket(batch: int, buckets: list[int]) -> int | None:
    """The smallest bucket that holds `batch` rows, or None if none does."""
    i = bisect.bisect_left(buckets, batch)
    return buckets[i] if i < len(buckets) and batch >= 1 else None


def pad_rows(x: torch.Tensor, bucket: int) -> torch.Tensor:
    """Extend dim 0 to `bucket` by repeating the last row."""
    n = x.shape[0]
    if n == bucket:
        return x
    return torch.cat([x, x[-1:].expand(bucket - n, *x.shape[1:])])


@dataclass
class StaticDecodeBuffers:
    """Inputs of a decode step at the largest bucket; a bucket of size b
    reads the first b rows."""

    input_ids: torch.Tensor  # [B]
    positions: torch.Tensor  # [B]
    slot_mapping: torch.Tensor  # [B]
    block_tables: torch.Tensor  # [B, W]
    seq_lens: torch.Tensor  # [B]
    query_start_loc: torch.Tensor  # [B + 1] = 0..B
    rows: torch.Tensor  # [B] = 0..B-1: decode row i is flat token i
    decode_kv_slots: torch.Tensor  # [B, W * block_size], for the torch reference
    decode_mask: torch.Tensor  # [B, 1, 1, W * block_size]
    block_size: int

    @classmethod
    def allocate(cls, max_batch: int, max_blocks: int, block_size: int, device: torch.device) -> "StaticDecodeBuffers":
        def z(*shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        ar = torch.arange(max_batch + 1, device=device)
        ld = max_blocks * block_size
        return cls(
            input_ids=z(max_batch), positions=z(max_batch), slot_mapping=z(max_batch),
            block_tables=z(max_batch, max_blocks), seq_lens=z(max_batch) + 1, query_start_loc=ar,
            rows=ar[:-1].clone(), decode_kv_slots=z(max_batch, ld),
            decode_mask=z(max_batch, 1, 1, ld, dtype=torch.bool), block_size=block_size,
        )

    @property
    def max_batch(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_blocks(self) -> int:
        return int(self.block_tables.shape[1])

    def meta(self, bucket: int) -> AttentionMetadata:
        """Metadata over views of the buffers: what a captured graph reads."""
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bucket], block_tables=self.block_tables[:bucket],
            seq_lens=self.seq_lens[:bucket], query_start_loc=self.query_start_loc[: bucket + 1],
            block_size=self.block_size, decode_seqs=self.rows[:bucket], decode_tokens=self.rows[:bucket],
            decode_kv_slots=self.decode_kv_slots[:bucket], decode_mask=self.decode_mask[:bucket], prefills=(),
        )

    def load(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, bucket: int,
             dense_slots: bool = True) -> None:
        """Copy one decode step (rows in flat-token order) into the first
        `bucket` rows, padding by repetition. dense_slots also refreshes the
        [B, L] slot table only the torch reference reads."""
        n, w = int(input_ids.shape[0]), int(meta.block_tables.shape[1])
        assert 1 <= n <= bucket <= self.max_batch and w <= self.max_blocks
        self.input_ids[:bucket].copy_(pad_rows(input_ids, bucket))
        self.positions[:bucket].copy_(pad_rows(positions, bucket))
        self.slot_mapping[:bucket].copy_(pad_rows(meta.slot_mapping, bucket))
        self.seq_lens[:bucket].copy_(pad_rows(meta.seq_lens, bucket))
        tables = self.block_tables[:bucket]
        tables[:, w:].zero_()
        tables[:, :w].copy_(pad_rows(meta.block_tables, bucket))
        if dense_slots:
            j = torch.arange(self.decode_kv_slots.shape[1], device=tables.device)
            bs = self.block_size
            self.decode_kv_slots[:bucket].copy_(tables[:, j // bs] * bs + j % bs)
            self.decode_mask[:bucket].copy_((j[None, :] < self.seq_lens[:bucket, None])[:, None, None, :])


class DecodeGraphRunner:
    """Captured decode graphs per bucket, over one set of static buffers."""

    def __init__(
        self,
        model: ForwardFn,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_size: int,
        max_batch: int,
        max_blocks_per_seq: int,
        device: torch.device,
        buckets: list[int] | None = None,
        use_graphs: bool | None = None,
        dense_slots: bool = True,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.device = torch.device(device)
        self.buckets = sorted(buckets or decode_buckets(max_batch))
        self.buffers = StaticDecodeBuffers.allocate(self.buckets[-1], max_blocks_per_seq, block_size, self.device)
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        # The Triton decode kernels read block tables, not the dense slot
        # table: a runner that knows it is on Triton can skip refreshing it.
        self.dense_slots = dense_slots
        self.graphs: dict[int, tuple["torch.cuda.CUDAGraph", torch.Tensor]] = {}
        self.pool = None

    def can_run(self, meta: AttentionMetadata) -> bool:
        """A pure decode step that fits a bucket and the buffers' table width."""
        n = int(meta.decode_seqs.shape[0])
        return (
            not meta.prefills
            and n == meta.num_tokens
            and pick_bucket(n, self.buckets) is not None
            and int(meta.block_tables.shape[1]) <= self.buffers.max_blocks
        )

    def _forward(self, bucket: int) -> torch.Tensor:
        b = self.buffers
        ctx = ForwardContext(b.meta(bucket), self.kv_caches)
        return self.model(b.input_ids[:bucket], b.positions[:bucket], ctx)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so smaller ones reuse its memory pool."""
        if not self.use_graphs:
            return
        for bucket in reversed(self.buckets):
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up: autotuning, lazy init, allocator
                    self._forward(bucket)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self._forward(bucket)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bucket] = (graph, out)
        torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [n, H] of a decode step (check can_run first)."""
        n = int(input_ids.shape[0])
        bucket = pick_bucket(n, self.buckets)
        if bucket is None:
            raise ValueError(f"decode batch {n} exceeds the largest bucket {self.buckets[-1]}")
        self.buffers.load(input_ids, positions, meta, bucket, self.dense_slots)
        if bucket in self.graphs:
            graph, out = self.graphs[bucket]
            graph.replay()
            return out[:n]
        return self._forward(bucket)[:n]
