"""The per-step description of a flat batch that attention kernels read.

The runner builds one of these per step; every attention layer of the model
reads the same instance. Index tensors are built once here, vectorized, so no
layer repeats the work and no kernel loops over tokens in Python.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PrefillSpan:
    """One request in the batch that feeds more than one token this step."""

    seq: int  # row in block_tables / seq_lens
    start: int  # first flat token index
    end: int  # one past the last flat token index
    context_start: int  # tokens already in the cache before this chunk


@dataclass(frozen=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [N] int64: cache slot each new token's K/V goes to
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with 0
    seq_lens: torch.Tensor  # [B] context length after this step
    query_start_loc: torch.Tensor  # [B+1] flat offsets of each request's tokens
    block_size: int
    # Requests feeding exactly one token (decode); attention over them is batched.
    decode_seqs: torch.Tensor  # [Bd] rows
    decode_tokens: torch.Tensor  # [Bd] flat token indices
    decode_kv_slots: torch.Tensor  # [Bd, Ld] cache slots of each decode row's context
    decode_mask: torch.Tensor  # [Bd, 1, 1, Ld] True where the key is visible
    prefills: tuple[PrefillSpan, ...]

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])

    @staticmethod
    def build_rows(
        query_lens: list[int],
        context_lens: list[int],
        block_tables: torch.Tensor,
        block_size: int,
        device: torch.device | str = "cpu",
    ) -> "AttentionMetadata":
        """The same step with every token as its own decode row: token i of a
        chunk attends, through the decode kernel, to the cache up to and
        including itself (every layer writes the whole step's K/V before it
        attends). So a prompt row is computed exactly as a decode row would
        compute it, whatever the chunking, cache hits or batch: the
        deterministic mode's attention."""
        seq = torch.repeat_interleave(torch.arange(len(query_lens)), torch.tensor(query_lens, dtype=torch.int64))
        ctx = [c + i for q, c in zip(query_lens, context_lens) for i in range(q)]
        return AttentionMetadata.build([1] * len(ctx), ctx, block_tables[seq], block_size, device)

    @staticmethod
    def _on(device: torch.device | str, block_size: int, prefills: tuple[PrefillSpan, ...],
            **tensors: torch.Tensor) -> "AttentionMetadata":
        """The instance with every index tensor (built on the CPU) moved to `device`."""
        return AttentionMetadata(block_size=block_size, prefills=prefills,
                                 **{name: t.to(device) for name, t in tensors.items()})

    @staticmethod
    def _build_decode(
        context_lens: list[int], block_tables: torch.Tensor, block_size: int, device: torch.device | str
    ) -> "AttentionMetadata":
        """`build` where every request feeds one token (a decode step): the
        same tensors in half the torch calls. Why: at batch 1 the general
        path's ~25 small ops took ~0.24 ms a step on a 2-core Zen 3, ~4% of
        the default model's whole decode step."""
        b = len(context_lens)
        cl = torch.tensor(context_lens, dtype=torch.int64)
        bt = block_tables.to(torch.int64)
        rows = torch.arange(b)
        seq_lens = cl + 1
        slot = bt[rows, cl // block_size] * block_size + cl % block_size
        j = torch.arange(max(context_lens) + 1)
        decode_slots = bt[:, j // block_size] * block_size + j % block_size
        decode_mask = (j[None, :] < seq_lens[:, None])[:, None, None, :]
        return AttentionMetadata._on(
            device, block_size, (), slot_mapping=slot, block_tables=bt, seq_lens=seq_lens,
            query_start_loc=torch.arange(b + 1), decode_seqs=rows, decode_tokens=rows,
            decode_kv_slots=decode_slots, decode_mask=decode_mask,
        )

    @staticmethod
    def build(
        query_lens: list[int],
        context_lens: list[int],
        block_tables: torch.Tensor,
        block_size: int,
        device: torch.device | str = "cpu",
    ) -> "AttentionMetadata":
        """query_lens[b] new tokens for request b, whose cache already holds
        context_lens[b] tokens; block_tables rows cover context + query."""
        if query_lens and all(q == 1 for q in query_lens):
            return AttentionMetadata._build_decode(context_lens, block_tables, block_size, device)
        return AttentionMetadata._build_general(query_lens, context_lens, block_tables, block_size, device)

    @staticmethod
    def _build_general(
        query_lens: list[int], context_lens: list[int], block_tables: torch.Tensor, block_size: int,
        device: torch.device | str,
    ) -> "AttentionMetadata":
        ql = torch.tensor(query_lens, dtype=torch.int64)
        cl = torch.tensor(context_lens, dtype=torch.int64)
        seq_lens = ql + cl
        qsl = torch.zeros(len(query_lens) + 1, dtype=torch.int64)
        torch.cumsum(ql, 0, out=qsl[1:])
        n = int(qsl[-1])
        bt = block_tables.to(torch.int64)
        # Position of every flat token inside its sequence, then its slot.
        seq_of_token = torch.repeat_interleave(torch.arange(len(query_lens)), ql)
        pos = torch.arange(n) - qsl[:-1][seq_of_token] + cl[seq_of_token]
        slot = bt[seq_of_token, pos // block_size] * block_size + pos % block_size

        is_decode = ql == 1
        decode_seqs = torch.nonzero(is_decode).flatten()
        ld = int(seq_lens[decode_seqs].max()) if len(decode_seqs) else 0
        j = torch.arange(ld)
        dbt = bt[decode_seqs]
        decode_slots = dbt[:, j // block_size] * block_size + j % block_size
        decode_mask = (j[None, :] < seq_lens[decode_seqs][:, None])[:, None, None, :]
        prefills = tuple(
            PrefillSpan(b, int(qsl[b]), int(qsl[b + 1]), context_lens[b])
            for b in range(len(query_lens))
            if query_lens[b] > 1
        )
        return AttentionMetadata._on(
            device, block_size, prefills, slot_mapping=slot, block_tables=bt, seq_lens=seq_lens,
            query_start_loc=qsl, decode_seqs=decode_seqs, decode_tokens=qsl[:-1][decode_seqs],
            decode_kv_slots=decode_slots, decode_mask=decode_mask,
        )
