"""What a caller sees of a sequence: one step's delta (tokens, text released
by engine/stopping.py, logprobs, how it finished), logprob entries, and the
per-request aggregate that LLM.generate() returns."""
from __future__ import annotations

from dataclasses import dataclass, field

from jevons.outputs import CompletionOutput, Logprob, RequestOutput, TokenLogprobs


@dataclass
class SeqDelta:
    """What one sequence gained in one step."""

    parent_id: str
    index: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprobs] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0  # prompt tokens this request got from the prefix cache
    # On the last delta: arrival, first_scheduled, first_token, finished (monotonic s).
    timings: dict[str, float] | None = None
    # finish_reason "error": what failed (the request failed inside the engine).
    error: str | None = None


@dataclass
class RequestAggregate:
    """Accumulates deltas of all n sequences of one user request."""

    output: RequestOutput
    want_logprobs: bool
    open_seqs: set[int] = field(default_factory=set)

    @classmethod
    def start(cls, request_id: str, prompt: str | None, prompt_ids: list[int], n: int, want_logprobs: bool) -> "RequestAggregate":
        outs = [CompletionOutput(index=i, logprobs=[] if want_logprobs else None) for i in range(n)]
        if want_logprobs:
            for o in outs:
                o.cumulative_logprob = 0.0
        return cls(RequestOutput(request_id, prompt, list(prompt_ids), outs), want_logprobs, set(range(n)))

    def apply(self, d: SeqDelta) -> None:
        o = self.output.outputs[d.index]
        o.token_ids.extend(d.token_ids)
        o.text += d.text
        if d.logprobs and o.logprobs is not None:
            o.logprobs.extend(d.logprobs)
            for lp, t in zip(d.logprobs, d.token_ids):
                o.cumulative_logprob = (o.cumulative_logprob or 0.0) + float(lp[t])
        if d.finish_reason is not None:
            o.finish_reason, o.stop_reason = d.finish_reason, d.stop_reason
            self.open_seqs.discard(d.index)
            self.output.finished = not self.open_seqs


def make_logprobs(
    token: int, logprob: float, rank: int, top_ids: list[int] | None, top_lps: list[float] | None, decode,
    token_bytes=None,
) -> TokenLogprobs:
    """`decode(t)` is a token's text, `token_bytes(t)` (optional) its raw bytes."""
    def entry(value: float, r: int, t: int) -> Logprob:
        return Logprob(value, r, decode(t), token_bytes(t) if token_bytes is not None else None)

    out: TokenLogprobs = {token: entry(logprob, rank, token)}
    for r, (t, lp) in enumerate(zip(top_ids or [], top_lps or []), start=1):
        if t not in out:
            out[t] = entry(lp, r, t)
    return out
