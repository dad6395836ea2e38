"""From sampled tokens to user-visible output: incremental text, stop strings
(matched on text, never leaked), logprobs, and the per-request aggregate that
generate() and the server return."""
from __future__ import annotations

from dataclasses import dataclass, field

from jevons.engine.detokenizer import Decoder, IncrementalDetokenizer
from jevons.engine.request import Request
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
class SeqText:
    """Text state of one sequence: what was decoded, what was released."""

    detok: IncrementalDetokenizer
    stops: tuple[str, ...]
    include_stop: bool
    text: str = ""
    emitted: int = 0

    def feed(self, piece: str) -> str | None:
        """Append decoded text; return the stop string if one now matches
        (the text is truncated at it)."""
        if not piece:
            return None
        old = len(self.text)
        self.text += piece
        if not self.stops:
            return None
        longest = max(len(s) for s in self.stops)
        window_start = max(0, old - longest + 1)
        best: tuple[int, str] | None = None
        for s in self.stops:
            i = self.text.find(s, window_start)
            if i != -1 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return None
        i, s = best
        self.text = self.text[: i + len(s)] if self.include_stop else self.text[:i]
        return s

    def release(self, finished: bool) -> str:
        """Text safe to show now: while running, hold back a tail that could
        still turn out to be the start of a stop string."""
        hold = 0 if finished or not self.stops else max(len(s) for s in self.stops) - 1
        end = max(self.emitted, len(self.text) - hold)
        out = self.text[self.emitted : end]
        self.emitted = end
        return out


class OutputProcessor:
    def __init__(self, tokenizer: Decoder) -> None:
        self.tokenizer = tokenizer
        self._seqs: dict[str, SeqText] = {}

    def add(self, req: Request) -> None:
        p = req.params
        self._seqs[req.request_id] = SeqText(
            IncrementalDetokenizer(self.tokenizer, req.prompt_token_ids, p.skip_special_tokens),
            p.stop_strings,
            p.include_stop_str_in_output,
        )

    def remove(self, request_id: str) -> None:
        self._seqs.pop(request_id, None)

    def process(self, req: Request, new_tokens: list[int], logprobs: list[TokenLogprobs] | None) -> tuple[SeqDelta, str | None]:
        """Returns the delta and, if a stop string matched, that string (the
        caller then finishes the request)."""
        st = self._seqs[req.request_id]
        stop_hit: str | None = None
        for i, t in enumerate(new_tokens):
            stop_hit = st.feed(st.detok.push(t))
            if stop_hit:
                # Several tokens arrive at once with speculative decoding: none
                # after the one that completed the stop string is emitted.
                new_tokens = new_tokens[: i + 1]
                logprobs = None if logprobs is None else logprobs[: i + 1]
                break
        finished = req.is_finished or stop_hit is not None
        if finished and stop_hit is None:
            stop_hit = st.feed(st.detok.flush())
        text = st.release(finished or stop_hit is not None)
        delta = SeqDelta(req.parent_id, req.index, new_tokens, text, logprobs)
        if stop_hit is not None:
            delta.finish_reason, delta.stop_reason = "stop", stop_hit
        elif req.is_finished:
            delta.finish_reason, delta.stop_reason = req.finish_reason, req.stop_reason
        if delta.finish_reason is not None:
            self.remove(req.request_id)
        return delta, stop_hit


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
