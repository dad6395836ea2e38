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
  entry and HCA's compressor inputs (the raw kv and gate a compressed entry
  is pooled from), kept only for the last `retain` tokens of a sequence
  (window - 1 or m' - 1); in a second, short lane the CSA layers' compressor
  inputs, kept for the last `short_retain` = 2m - 1 tokens only. A request's
  block table carries its window blocks after its main blocks, as ids offset
  by the main pool's size (the short lane's after, offset past both pools),
  each run aligned to its last main blocks.

A compressed entry is pooled once, in the step that computes its group's last
token, from the window pool's raw inputs, and never changes after: a main
block is complete (shareable) exactly when its tokens are computed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.kernels.torch_ref.v4_attention import sequences

Spec = list[tuple[tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class V4CacheLayout:
    main: Spec  # per layer, per-token shapes in the engine's block pool
    window: Spec  # per layer, per-token shapes in the window pool
    retain: int  # tokens before a step's first token whose window entries it may read
    short: Spec = field(default_factory=list)  # per layer, in the short lane (CSA's inputs); [] for none
    short_retain: int = 0  # ... and the tokens before a step it may read there


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
    short_lo: int  # the same for the short lane
    short_slots: torch.Tensor

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
    new_short_slots: torch.Tensor  # the same in the short lane
    short_offset: int  # kv_caches[short_offset + layer] is a layer's short-lane pair


def _run_slots(run: torch.Tensor, n_main: int, lo: int, total: int, b: int) -> torch.Tensor:
    """Slots of positions [lo, total) in a lane whose run covers the last
    len(run) of a request's n_main main blocks."""
    first = n_main - int(run.shape[0])
    pos = torch.arange(lo, total, device=run.device)
    idx = pos // b - first
    if int(idx.min()) < 0:
        raise RuntimeError(f"window blocks missing for positions from {lo} (window run from block {first})")
    return run[idx] * b + pos % b


def build_step(meta: AttentionMetadata, num_main_blocks: int, num_layers: int, retain: int,
               num_window_blocks: int = 0, short_retain: int = 0) -> V4Step:
    """Parse every request's block table once per step: main ids, then the
    window run (ids from num_main_blocks), then the short lane's (ids from
    num_main_blocks + num_window_blocks). A table without window ids (a
    driver whose window tensors share the main pool's ids) puts a token's
    window entries at its main slot, in both lanes."""
    b = meta.block_size
    seqs: list[SeqStep] = []
    device = meta.slot_mapping.device
    new = torch.empty(meta.num_tokens, dtype=torch.int64, device=device)
    new_short = torch.empty(meta.num_tokens, dtype=torch.int64, device=device)
    short_base = num_main_blocks + num_window_blocks
    for seq, rows, start, total in sequences(meta):
        row = meta.block_tables[seq]
        lo = max(0, start - retain)
        short_lo = max(0, start - short_retain) if short_retain else lo
        is_win = row >= num_main_blocks
        if bool(is_win.any()):
            n_main = int(is_win.int().argmax())
            ids = row[is_win]
            in_short = ids >= short_base if short_retain else torch.zeros_like(ids, dtype=torch.bool)
            slots = _run_slots(ids[~in_short] - num_main_blocks, n_main, lo, total, b)
            short = _run_slots(ids[in_short] - short_base, n_main, short_lo, total, b) if short_retain else slots
            table = row[:n_main]
        else:
            pos, spos = (torch.arange(p, total, device=row.device) for p in (lo, short_lo))
            slots, short = row[pos // b] * b + pos % b, row[spos // b] * b + spos % b
            table = row
        seqs.append(SeqStep(seq, rows, start, total, table, lo, slots, short_lo, short))
        new[rows] = slots[start - lo :]
        new_short[rows] = short[start - short_lo :]
    return V4Step(seqs, new, num_layers, new_short, 2 * num_layers)
