"""DP-attention (`--enable-dp-attention`): which rank serves which request.

Every rank gets the whole step (the executors broadcast one RunnerInput as
for tensor parallelism) and keeps its own share. A request stays on the rank
that computed its first tokens, since its KV cache is there; a new request
(or one recomputed from scratch after preemption) goes to the rank with the
fewest requests in this step, ties to the lower rank. Every rank runs this
same function over the same inputs in the same order, so all agree on the
placement without a word between them.

The KV block ids are the engine's one pool; each rank allocates the whole
pool and writes only its requests' blocks. Prefix caching is refused: a
cached block's KV lives on the rank that computed it, and a later request
hitting it may be placed elsewhere.
"""
from __future__ import annotations

from collections import OrderedDict

from jevons.runner.step_io import RunnerInput, RunnerOutput

# Requests remembered (least recently stepped forgotten first): far more than
# ever run at once, so only long-finished requests are dropped.
MAX_REMEMBERED = 1 << 16


class RequestPlacement:
    def __init__(self, size: int) -> None:
        self.size = size
        self.owner: OrderedDict[str, int] = OrderedDict()

    def split(self, inp: RunnerInput) -> list[RunnerInput]:
        """Each rank's requests of this step, in the step's order."""
        count = [0] * self.size
        ranks: list[int | None] = []
        for r in inp.requests:
            o = self.owner.get(r.request_id) if r.context_len > 0 else None
            ranks.append(o)
            if o is not None:
                count[o] += 1
        for i, r in enumerate(inp.requests):
            if ranks[i] is None:
                o = min(range(self.size), key=lambda k: (count[k], k))
                ranks[i] = o
                count[o] += 1
            self.owner[r.request_id] = ranks[i]  # type: ignore[assignment]
            self.owner.move_to_end(r.request_id)
        while len(self.owner) > MAX_REMEMBERED:
            self.owner.popitem(last=False)
        return [RunnerInput([r for r, o in zip(inp.requests, ranks) if o == k]) for k in range(self.size)]


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
