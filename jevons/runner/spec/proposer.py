"""The proposer contract and the one place a SpeculativeConfig becomes a proposer."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from jevons.config import SpeculativeConfig


class Proposer(Protocol):
    def propose(self, token_ids: Sequence[int], max_drafts: int) -> list[int]:
        """At most max_drafts guesses of the tokens that follow token_ids
        (the sequence's prompt + output so far); [] to not speculate."""
        ...


def build_proposer(cfg: SpeculativeConfig | None) -> Proposer | None:
    if cfg is None or cfg.method in ("mtp", "draft_model"):  # drafted in the runner (mtp.py, draft_model.py)
        return None
    if cfg.method == "ngram":
        from jevons.runner.spec.ngram import NgramProposer

        return NgramProposer(cfg.num_speculative_tokens, cfg.prompt_lookup_max, cfg.prompt_lookup_min)
    raise ValueError(f"speculative method {cfg.method!r} is not supported")
