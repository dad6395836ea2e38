"""Prompt lookup ("n-gram") drafting: find the latest earlier occurrence of
the sequence's last n tokens in its own prompt + output and propose the
tokens that followed it. No model, no state: it pays off when the output
copies from the context (code edits, quoting, summaries that reuse phrases)
and proposes nothing on free-form text, so verification costs nothing there."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class NgramProposer:
    def __init__(self, num_speculative_tokens: int, prompt_lookup_max: int, prompt_lookup_min: int) -> None:
        self.k = num_speculative_tokens
        self.max_n = prompt_lookup_max
        self.min_n = prompt_lookup_min

    def propose(self, token_ids: Sequence[int], max_drafts: int) -> list[int]:
        """Up to min(k, max_drafts) tokens that followed the longest earlier
        match of the sequence's suffix; [] when none matches."""
        k = min(self.k, max_drafts)
        n_tok = len(token_ids)
        if k <= 0 or n_tok <= self.min_n:
            return []
        arr = np.asarray(token_ids, dtype=np.int64)
        for n in range(min(self.max_n, n_tok - 1), self.min_n - 1, -1):
            # Windows that start before the suffix itself and end before the last token.
            windows = sliding_window_view(arr[: n_tok - 1], n)
            hits = np.flatnonzero((windows == arr[n_tok - n :]).all(axis=1))
            if len(hits):
                # The latest match that is followed by k tokens (else the latest):
                # recent context predicts best, but a match just behind the
                # suffix has little to propose.
                full = hits[hits + n + k <= n_tok]
                start = int(full[-1] if len(full) else hits[-1]) + n
                return arr[start : start + k].tolist()
        return []
