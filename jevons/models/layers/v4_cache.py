"""DeepSeek-V4's compact paged cache: where each per-token and per-entry cache
of a layer lives, and the per-step addressing every layer shares.

Two pools, both paged with the engine's block size B:
- the main pool (the engine's blocks, prefix-cached and tiered): per CSA / HCA
  layer only the compressed entries, one per m tokens (CSA: the entry and its
  indexer key), stored in the block that holds the group's last token, at
  ceil(B / m) entries per block; sliding-only layers keep nothing here. So a
  token costs (head_dim + index_head_dim) / m per CSA layer and head_dim / m'
  per HCA layer: `jevons plan`'s figure, exact when m divides B (and HCA's
  m' = 128 rounds up to one entry per block below B = 128).
- the window pool (engine/window_blocks.py): per layer each token's window
  entry and its compressor inputs (the raw kv and gate a compressed entry is
  pooled from), kept only for the last `retain` tokens of a sequence. A
  request's block table carries its window blocks after its main blocks, as
  ids offset by the main pool's size, aligned to its last main blocks.

A compressed entry is pooled once, in the step that computes its group's last
token, from the window pool's raw inputs, and never changes after: a main
block is complete (shareable) exactly when its tokens are computed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.kernels.torch_ref.v4_attention import sequences

Spec = list[tuple[tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class V4CacheLayout:
    main: Spec  # per layer, per-token shapes in the engine's block pool
    window: Spec  # per layer, per-token shapes in the window pool
    retain: int  # tokens before a step's first token whose window entries it may read


def entries_per_block(rate: int, block_size: int) -> int:
    if block_size % rate and rate % block_size:
        raise ValueError(f"DeepSeek-V4 needs a block size that divides or is a multiple of the compression rate "
                         f"{rate} (got {block_size})")
    return max(1, block_size // rate)


def per_token_width(values_per_block: int, block_size: int) -> int:
    """Per-token width of a tensor that holds values_per_block per block."""
    return -(-values_per_block // block_size)


def entry_view(cache: torch.Tensor, per_block: int, dim: int) -> torch.Tensor:
    """[N, B, w] main-pool tensor -> [N, per_block, dim] entries (a view)."""
    n = cache.shape[0]
    return cache.view(n, -1)[:, : per_block * dim].view(n, per_block, dim)


@dataclass
class SeqStep:
    seq: int
    rows: torch.Tensor  # flat token rows of this request in the step
    start: int  # context before the step
    total: int  # context after the step
    table: torch.Tensor  # main block ids
    lo: int  # first position with a window slot in win_slots
    win_slots: torch.Tensor  # window-pool slots of positions [lo, total)

    def entry_locations(self, groups: torch.Tensor, rate: int, block_size: int, per_block: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(block id, index in block) of compressed entries `groups`."""
        last = (groups + 1) * rate - 1
        return self.table[last // block_size], (last % block_size) // rate if per_block > 1 else last * 0


@dataclass
class V4Step:
    seqs: list[SeqStep]
    new_win_slots: torch.Tensor  # [N] window-pool slot of every token of the step
    window_offset: int  # kv_caches[window_offset + layer] is a layer's window pair


def build_step(meta: AttentionMetadata, num_main_blocks: int, num_layers: int, retain: int) -> V4Step:
    """Parse every request's block table once per step. A table without
    window ids (a driver whose window tensors share the main pool's ids)
    puts a token's window entries at its main slot."""
    b = meta.block_size
    seqs: list[SeqStep] = []
    new = torch.empty(meta.num_tokens, dtype=torch.int64, device=meta.slot_mapping.device)
    for seq, rows, start, total in sequences(meta):
        row = meta.block_tables[seq]
        lo = max(0, start - retain)
        pos = torch.arange(lo, total, device=row.device)
        is_win = row >= num_main_blocks
        if bool(is_win.any()):
            n_main = int(is_win.int().argmax())
            run = row[is_win] - num_main_blocks
            first = n_main - int(run.shape[0])
            idx = pos // b - first
            if int(idx.min()) < 0:
                raise RuntimeError(f"window blocks missing for positions from {lo} (window run from block {first})")
            slots = run[idx] * b + pos % b
            table = row[:n_main]
        else:
            slots = row[pos // b] * b + pos % b
            table = row
        seqs.append(SeqStep(seq, rows, start, total, table, lo, slots))
        new[rows] = slots[start - lo :]
    return V4Step(seqs, new, num_layers)
