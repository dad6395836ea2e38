"""DP-attention (`--enable-dp-attention`): which rank serves which request,
and which KV blocks must move between ranks first.

Every rank gets the whole step (the executors broadcast one RunnerInput as
for tensor parallelism) and keeps its own share. Every rank runs `split`
over the same inputs in the same order, so all agree on the placement and
on the copies without a word between them.

- A request that continues where it left off (or a little before: rejected
  drafts) stays on its rank: its KV is there.
- A new request (or one starting over after preemption) with nothing cached
  goes to the rank with the fewest requests in the step, ties to the lower.
- A request that starts on prefix-cache hits goes to the rank holding most
  of its hit blocks, unless that rank runs more than BALANCE_SLACK requests
  over the least loaded one (then to that one); the hit blocks its rank does
  not hold are copied there first (`copy_blocks`: one broadcast per layer
  and source rank, so every rank holds them after).

The KV block ids are the engine's one pool; each rank allocates the whole
pool and writes only its requests' blocks. `holders` records which ranks
hold each block's current contents: the rank that writes a block becomes its
only holder; a copied block is held by all.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from jevons.runner.step_io import RunnerInput, RunnerOutput, RunRequest

# Requests remembered (least recently stepped forgotten first): far more than
# ever run at once, so only long-finished requests are dropped.
MAX_REMEMBERED = 1 << 16
# How many more requests than the least loaded rank a rank may run in a step
# before a prefix hit is moved away from it (its blocks copied).
BALANCE_SLACK = 1

Copy = tuple[int, int]  # (block id, source rank)


class RequestPlacement:
    def __init__(self, size: int, block_size: int) -> None:
        self.size = size
        self.block_size = block_size
        self.owner: OrderedDict[str, tuple[int, int]] = OrderedDict()  # request -> (rank, tokens computed)
        self.holders: dict[int, frozenset[int]] = {}  # block id -> ranks holding its contents

    def split(self, inp: RunnerInput) -> tuple[list[RunnerInput], list[Copy]]:
        """Each rank's requests of this step (in the step's order), and the
        blocks to copy before it runs (in an order every rank agrees on)."""
        count = [0] * self.size
        ranks: list[int | None] = []
        resumed: list[bool] = []  # exactly where it left off: nothing to check
        for r in inp.requests:
            known = self.owner.get(r.request_id)
            # Kept where it ran while it only moves on (or back: rejected drafts).
            keep = known is not None and 0 < r.context_len <= known[1]
            ranks.append(known[0] if keep else None)  # type: ignore[index]
            resumed.append(keep and r.context_len == known[1])  # type: ignore[index]
            if keep:
                count[known[0]] += 1  # type: ignore[index]
        copies: list[Copy] = []
        everyone = frozenset(range(self.size))
        for i, r in enumerate(inp.requests):
            hit = r.block_ids[: r.context_len // self.block_size]  # full blocks it reads but does not write
            if ranks[i] is None:
                ranks[i] = self._place(hit, count)
                count[ranks[i]] += 1  # type: ignore[index]
            o = ranks[i]
            if not resumed[i]:
                for b in hit:
                    held = self.holders.get(b, frozenset())
                    if o not in held:
                        if not held:
                            raise RuntimeError(f"DP-attention: no rank holds KV block {b} (request {r.request_id})")
                        copies.append((b, min(held)))
                        self.holders[b] = everyone
            self._wrote(r, o)  # type: ignore[arg-type]
        while len(self.owner) > MAX_REMEMBERED:
            self.owner.popitem(last=False)
        parts = [RunnerInput([r for r, o in zip(inp.requests, ranks) if o == k]) for k in range(self.size)]
        return parts, copies

    def _place(self, hit: list[int], count: list[int]) -> int:
        least = min(range(self.size), key=lambda k: (count[k], k))
        if not hit:
            return least
        held = [sum(k in self.holders.get(b, ()) for b in hit) for k in range(self.size)]
        best = min(range(self.size), key=lambda k: (-held[k], count[k], k))
        return best if count[best] <= count[least] + BALANCE_SLACK else least

    def _wrote(self, r: RunRequest, rank: int) -> None:
        """The blocks this step writes are now held by `rank` alone."""
        end = r.context_len + len(r.token_ids)
        bs = self.block_size
        for j in range(r.context_len // bs, -(-end // bs)):
            self.holders[r.block_ids[j]] = frozenset((rank,))
        self.owner[r.request_id] = (rank, end)
        self.owner.move_to_end(r.request_id)


def copy_blocks(kv_caches: list[tuple[torch.Tensor, torch.Tensor]], copies: list[Copy], group) -> None:
    """Give every rank the contents of the copied blocks, from their source
    ranks (every rank calls this with the same copies)."""
    import torch.distributed as dist

    by_src: dict[int, list[int]] = {}
    for b, src in copies:
        by_src.setdefault(src, []).append(b)
    for src in sorted(by_src):
        for k, v in kv_caches:
            for t in (k, v):
                if t.numel() == 0:  # MLA's empty V: the same on every rank
                    continue
                ids = torch.tensor(by_src[src], device=t.device)
                buf = t.index_select(0, ids)
                dist.broadcast(buf, src=src, group=group)
                t.index_copy_(0, ids, buf)


def merge(inp: RunnerInput, outputs: list[RunnerOutput | None]) -> RunnerOutput:
    """One RunnerOutput from the ranks' (each answers for its own requests),
    in the step's row order, as one process gives it."""
    sampled, spec = {}, {}
    for o in outputs:
        if o is not None:
            sampled.update(o.sampled)
            spec.update(o.spec)
    out = RunnerOutput()
    for r in inp.requests:
        if r.request_id in sampled:
            out.sampled[r.request_id] = sampled[r.request_id]
        if r.request_id in spec:
            out.spec[r.request_id] = spec[r.request_id]
    return out
