"""When a sequence stops: one decision per new token, made here and nowhere else.

For each token a step gives a sequence (one, or several when speculative
drafts were accepted), in order, `Stopping.decide`:

1. applies the reasoning budget: once `max_reasoning_tokens` thinking tokens
   are spent the kept token is `</think>` (then "\\n\\n"), not the sampled one;
2. detokenizes it and matches the stop strings on the text, so a stop string
   that spans tokens is found at the token that completes it; the text is cut
   before it (or after it, with `include_stop_str_in_output`);
3. applies the token rules: EOS (unless `ignore_eos`) and `stop_token_ids`,
   both only once `min_tokens` are out; `max_tokens` and the context length;
4. advances the grammar (a complete grammar ends the sequence, even under
   `ignore_eos`) and the budget's think-block state;
5. on the token that finishes the sequence, flushes the detokenizer (its text
   may still complete a stop string).

The first token that finishes the sequence is the last one kept: drafts after
it are dropped before the scheduler appends anything, so neither the output,
the usage nor the prefix cache ever holds a token past a stop. A stop string
beats the token rules on the same token (its text is what the client reads).

`banned` is the other half of `min_tokens`: the ids the next draw may not
pick (EOS and the stop ids) while fewer than `min_tokens` are out.
`release` is the text safe to stream now: while a sequence runs, a tail that
could still become the start of a stop string is held back, so no streamed
text is ever cut later.

Abort and error are the engine's decisions about a request, never a token's;
they do not pass through here."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jevons.engine.detokenizer import Decoder, IncrementalDetokenizer
from jevons.engine.reasoning import ReasoningBudget, ThinkState
from jevons.engine.request import Request

STOP, LENGTH = "stop", "length"


@dataclass(frozen=True)
class Finish:
    """Why a sequence ended: "stop" (EOS, a stop token id, a stop string, a
    complete grammar) or "length" (max_tokens or the context). `stop_reason`
    is the stop token id or the stop string (None for EOS, length, grammar)."""

    reason: str
    stop_reason: int | str | None = None


@dataclass(frozen=True)
class Verdict:
    """One sequence's new tokens, decided: the ones to keep, in order, and
    whether the last of them finishes it. `num_sampled` is how many the
    runner gave (a stop inside accepted drafts keeps fewer)."""

    tokens: list[int]
    finish: Finish | None
    num_sampled: int


class StopText:
    """A sequence's decoded text, matched against its stop strings as it grows,
    and how much of it has been released."""

    def __init__(self, detok: IncrementalDetokenizer, stops: tuple[str, ...], include_stop: bool) -> None:
        self.detok = detok
        self.stops = stops
        self.include_stop = include_stop
        self.longest = max((len(s) for s in stops), default=0)
        self.text = ""
        self.emitted = 0

    def feed(self, piece: str) -> str | None:
        """Append decoded text; return the stop string if one now matches (the
        text is cut at it). Only the window a new match can start in is searched;
        the earliest match wins."""
        if not piece:
            return None
        old = len(self.text)
        self.text += piece
        if not self.stops:
            return None
        window_start = max(0, old - self.longest + 1)
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
        hold = 0 if finished or not self.stops else self.longest - 1
        end = max(self.emitted, len(self.text) - hold)
        out = self.text[self.emitted : end]
        self.emitted = end
        return out


@dataclass
class _SeqStop:
    text: StopText
    think: ThinkState | None  # only under max_reasoning_tokens


class Stopping:
    """The engine's stop decisions, one state per sequence (add on arrival,
    forget when it ends however it ends)."""

    def __init__(self, tokenizer: Decoder, max_model_len: int, budget: ReasoningBudget | None = None,
                 grammar_accept: Callable[[str, int], bool] | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.budget = budget
        # StructuredOutputManager.accept: advances a sequence's matcher; True once its grammar is complete.
        self.grammar_accept = grammar_accept
        self._seqs: dict[str, _SeqStop] = {}

    def add(self, req: Request) -> None:
        p = req.params
        detok = IncrementalDetokenizer(self.tokenizer, req.prompt_token_ids, p.skip_special_tokens)
        think = None
        if p.max_reasoning_tokens is not None and self.budget is not None:
            think = self.budget.begin(req.prompt_token_ids, p.max_reasoning_tokens)
        self._seqs[req.request_id] = _SeqStop(StopText(detok, p.stop_strings, p.include_stop_str_in_output), think)

    def forget(self, request_id: str) -> None:
        self._seqs.pop(request_id, None)

    @staticmethod
    def banned(req: Request) -> list[int]:
        """Ids the next draw may not pick: EOS and the stop ids, while fewer
        than min_tokens are out (EOS only where ignore_eos is off)."""
        if req.num_output_tokens < req.params.min_tokens:
            return sorted(req.eos_token_ids | req.stop_token_ids)
        return []

    def decide(self, req: Request, sampled: list[int]) -> Verdict:
        """Decide each sampled token in order, up to the first that finishes
        the sequence. Advances the sequence's text, grammar and think state
        for the tokens kept (the caller appends exactly those)."""
        st, budget = self._seqs[req.request_id], self.budget
        kept: list[int] = []
        finish: Finish | None = None
        for token in sampled:
            if st.think is not None and budget is not None:
                token = budget.override(st.think, token)
            kept.append(token)
            stop_str = st.text.feed(st.text.detok.push(token))
            finish = self._token_rules(req, token, req.num_output_tokens + len(kept))
            if self.grammar_accept is not None and self.grammar_accept(req.request_id, token) and finish is None:
                finish = Finish(STOP)  # the grammar is complete (even with ignore_eos)
            if st.think is not None and budget is not None:
                budget.observe(st.think, token)
            if finish is not None and stop_str is None:
                stop_str = st.text.feed(st.text.detok.flush())  # the last held bytes may complete a stop string
            if stop_str is not None:
                finish = Finish(STOP, stop_str)
            if finish is not None:
                break
        return Verdict(kept, finish, len(sampled))

    def _token_rules(self, req: Request, token: int, num_output: int) -> Finish | None:
        """EOS and stop ids once min_tokens are out; then max_tokens and the context."""
        if num_output >= req.params.min_tokens:
            if token in req.eos_token_ids:
                return Finish(STOP)
            if token in req.stop_token_ids:
                return Finish(STOP, token)
        if num_output >= req.max_tokens or req.num_tokens + (num_output - req.num_output_tokens) >= self.max_model_len:
            return Finish(LENGTH)
        return None

    def release(self, request_id: str, finished: bool) -> str:
        """The sequence's text that is safe to show now (all of it once finished)."""
        return self._seqs[request_id].text.release(finished)
