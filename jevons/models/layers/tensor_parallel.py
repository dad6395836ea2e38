"""Tensor parallelism for the models: which slice of each weight a rank
holds (and, for a MoE, which experts under expert parallelism), the
collectives a sharded layer needs (all-reduce, the logits' all-gather, and
DP-attention's gather of every rank's rows), and the vocab-parallel
embedding.

The sharded linears are plain `nn.Linear`s of the shard's shape: a
column-parallel layer (qkv, gate/up, the head) holds some of the output rows,
a row-parallel one (o_proj, down) some of the input columns, and the model
sums the row-parallel outputs with one all-reduce per attention and MLP block.
Keeping them plain Linears is deliberate: quantization, oneDNN prepacking and
the batch-invariant tiles (layers/linear.py, packed_linear.py,
batch_invariant.py) then work on the shards unchanged.

`TensorParallel()` (size 1) is the single-device setting: every collective is
the identity and every slice the whole tensor, so an unsharded model runs
exactly the code it ran before tensor parallelism existed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TensorParallel:
    rank: int = 0
    size: int = 1
    # The torch.distributed process group of the ranks that share one model
    # (None: the default group).
    group: Any = None
    # --enable-expert-parallel: a MoE's routed experts are partitioned over
    # these same ranks (whole experts, see experts()) instead of each expert's
    # intermediate size being split like a dense MLP's.
    expert_parallel: bool = False
    # --enable-dp-attention: attention, dense layers, embedding and head are
    # whole on every rank, each rank serving its own requests (data
    # parallel); only the MoE layers meet, over every rank's tokens, with the
    # routed experts dealt out as under expert_parallel.
    dp_attention: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"tensor-parallel rank {self.rank} is outside [0, {self.size})")

    # --- how a dimension splits -------------------------------------------------
    def split(self, n: int, what: str) -> int:
        """This rank's share of n (heads, intermediate size): n must divide evenly."""
        if n % self.size:
            raise ValueError(f"{what} ({n}) is not divisible by the tensor-parallel size {self.size}")
        return n // self.size

    def kv_heads(self, num_kv_heads: int) -> tuple[int, int]:
        """(first KV head, count) this rank holds. With fewer KV heads than
        ranks each head is replicated on size // num_kv_heads ranks (each rank's
        query heads all read the one KV head of their group)."""
        if num_kv_heads >= self.size:
            per = self.split(num_kv_heads, "the number of KV heads")
            return self.rank * per, per
        if self.size % num_kv_heads:
            raise ValueError(f"the tensor-parallel size {self.size} is not a multiple of the "
                             f"number of KV heads ({num_kv_heads})")
        return self.rank * num_kv_heads // self.size, 1

    def dense(self) -> "TensorParallel":
        """The split for everything but the routed experts: none (one
        device's) under DP-attention, this one otherwise."""
        return TensorParallel() if self.dp_attention else self

    def experts(self, num_experts: int) -> tuple[int, int]:
        """(first routed expert, count) this rank holds: a contiguous
        num_experts / size of them under expert parallelism (and
        DP-attention), all otherwise."""
        if not (self.expert_parallel or self.dp_attention):
            return 0, num_experts
        per = self.split(num_experts, "the number of routed experts")
        return self.rank * per, per

    def vocab_shard(self, vocab: int) -> tuple[int, int]:
        """(first row, rows) of the embedding and head on this rank: ceil(vocab /
        size) rows each, the last shard padded past the vocabulary."""
        per = -(-vocab // self.size)
        return self.rank * per, per

    # --- collectives ---------------------------------------------------------------
    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum the ranks' partial results (after a row-parallel linear), in place."""
        if self.size == 1:
            return x
        import torch.distributed as dist

        dist.all_reduce(x, group=self.group)
        return x

    def gather_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, slice]:
        """DP-attention: every rank's rows of x (a different number on each),
        concatenated in rank order on every rank, and where this rank's are.
        gloo's all_gather takes equal shapes, so the counts go first and the
        rows are padded to the largest."""
        if self.size == 1:
            return x, slice(0, x.shape[0])
        import torch.distributed as dist

        n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)  # NCCL takes device tensors only
        counts_t = [torch.empty_like(n) for _ in range(self.size)]
        dist.all_gather(counts_t, n, group=self.group)
        counts = [int(c.item()) for c in counts_t]
        most = max(counts)
        start = sum(counts[: self.rank])
        if most == 0:
            return x, slice(0, 0)
        padded = x.new_zeros(most, *x.shape[1:])
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:c] for p, c in zip(parts, counts)]), slice(start, start + x.shape[0])

    def gather_vocab(self, logits: torch.Tensor, vocab: int) -> torch.Tensor:
        """[rows, vocab shard] on each rank -> [rows, vocab] on every rank.
        Every rank gets the full logits (an all-gather, not a gather to rank 0):
        each samples identically, so the runner has no rank-specific path."""
        if self.size == 1:
            return logits
        import torch.distributed as dist

        logits = logits.contiguous()
        parts = [torch.empty_like(logits) for _ in range(self.size)]
        dist.all_gather(parts, logits, group=self.group)
        return torch.cat(parts, dim=-1)[..., :vocab]

    def agree_min(self, n: int) -> int:
        """The smallest of every rank's n (e.g. the KV blocks each can hold)."""
        if self.size == 1:
            return n
        import torch.distributed as dist

        t = torch.tensor([n], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return int(t.item())


class VocabParallelEmbedding(nn.Embedding):
    """An embedding holding rows [start, start + rows) of the vocabulary.
    A token outside the shard looks up zeros; the all-reduce adds the one rank
    that holds it. As an nn.Embedding, a tied head built from its weight
    (layers/linear.py's output_head) is the head's matching shard."""

    def __init__(self, vocab: int, dim: int, tp: TensorParallel) -> None:
        self.start, rows = tp.vocab_shard(vocab)
        super().__init__(rows, dim)
        self.vocab = vocab
        self.tp = tp

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        inside = (local >= 0) & (local < self.num_embeddings)
        out = F.embedding(torch.where(inside, local, 0), self.weight)
        out = out * inside.unsqueeze(-1).to(out.dtype)
        return self.tp.all_reduce(out)


def load_rows(param: torch.Tensor, tensor: torch.Tensor, start: int) -> None:
    """Copy rows [start, start + len(param)) of a full checkpoint tensor into a
    shard; rows past the tensor's end (a padded vocab shard) become zeros."""
    rows = max(0, min(param.shape[0], tensor.shape[0] - start))
    param.data[:rows].copy_(tensor[start : start + rows])
    param.data[rows:].zero_()
