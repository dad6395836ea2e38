"""Engine-side grammar state: one matcher per sequence that has a constraint.

The engine calls, per step:
- `masks(ids)` before the runner executes: a packed token bitmask row
  (int32, bit i of word i // 32 = token i allowed) per constrained sequence
  that samples this step; the runner only applies it (runner/sampler.py);
- `accept(id, token)` for every token appended to a sequence, which advances
  its matcher and says whether the output is complete;
- `rollback(id, n)` when tokens a sequence was given are taken back (a draft
  not accepted); preemption keeps a sequence's output tokens, so its matcher
  needs nothing then;
- `forget(id)` when a sequence finishes or is aborted.

A sequence whose constraint starts after the reasoning (`after_reasoning`)
is unconstrained until it emits the think-end token."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from jevons.runner.step_io import RunnerInput
from jevons.sampling_params import StructuredOutputsParams
from jevons.structured.contracts import GrammarTokenizer

if TYPE_CHECKING:  # xgrammar is imported on the first constrained request, not with the engine
    import xgrammar as xgr

    from jevons.structured.backend import GrammarBackend


@dataclass
class _State:
    matcher: xgr.GrammarMatcher
    active: bool  # False while the reasoning runs (after_reasoning)
    accepted: int = 0  # tokens the matcher has taken, for rollback bounds


class StructuredOutputManager:
    def __init__(self, tokenizer: GrammarTokenizer, vocab_size: int, think_end_id: int | None = None) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._backend: GrammarBackend | None = None  # built on first use: ~0.3 s for a 49k vocab
        self.think_end_id = think_end_id
        self._states: dict[str, _State] = {}

    @property
    def backend(self) -> GrammarBackend:
        if self._backend is None:
            from jevons.structured.backend import GrammarBackend

            self._backend = GrammarBackend(self._tokenizer, self._vocab_size)
        return self._backend

    def validate(self, spec: StructuredOutputsParams) -> None:
        """Compile (and cache) the grammar; GrammarError if it is invalid."""
        self.backend.compile(spec)

    def add(self, seq_id: str, spec: StructuredOutputsParams) -> None:
        grammar = self.backend.compile(spec)
        active = not (spec.after_reasoning and self.think_end_id is not None)
        self._states[seq_id] = _State(self.backend.matcher(grammar), active)

    def has(self, seq_id: str) -> bool:
        return seq_id in self._states

    def __len__(self) -> int:
        return len(self._states)

    def masks(self, seq_ids: list[str]) -> dict[str, torch.Tensor]:
        """A bitmask row for each of `seq_ids` that is constrained now, filled
        in one batch tensor."""
        live = [s for s in seq_ids if s in self._states and self._states[s].active
                and not self._states[s].matcher.is_terminated()]
        if not live:
            return {}
        import xgrammar as xgr

        bitmask = xgr.allocate_token_bitmask(len(live), self._vocab_size)
        for row, sid in enumerate(live):
            self._states[sid].matcher.fill_next_token_bitmask(bitmask, row)
        return {sid: bitmask[row] for row, sid in enumerate(live)}

    def accept(self, seq_id: str, token: int) -> bool:
        """Advance `seq_id`'s matcher by `token`; True when its output is now
        complete (the grammar has accepted a stop token). A token the grammar
        refuses (only possible when something forced it past the mask) raises."""
        st = self._states.get(seq_id)
        if st is None:
            return False
        if not st.active:
            st.active = token == self.think_end_id
            return False
        if not st.matcher.accept_token(token):
            raise RuntimeError(f"token {token} breaks the output's grammar")
        st.accepted += 1
        return st.matcher.is_terminated()

    def rollback(self, seq_id: str, num_tokens: int) -> None:
        st = self._states.get(seq_id)
        if st is not None and num_tokens:
            n = min(num_tokens, st.accepted)
            st.matcher.rollback(n)
            st.accepted -= n

    def forget(self, seq_id: str) -> None:
        self._states.pop(seq_id, None)

    def attach(self, inp: RunnerInput) -> None:
        """Give each constrained request that samples in `inp` its mask row."""
        if not self._states:
            return
        masks = self.masks([r.request_id for r in inp.requests if r.samples])
        for r in inp.requests:
            r.grammar_mask = masks.get(r.request_id)
