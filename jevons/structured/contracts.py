"""What the grammar machinery needs of a tokenizer, and the error it raises.
Kept apart from backend.py so that importing them does not import xgrammar
(which pulls in transformers: seconds of start-up for every engine)."""
from __future__ import annotations

from typing import Protocol


class GrammarTokenizer(Protocol):
    """What the backend needs of a tokenizer (loader/tokenizer.py has it)."""

    vocab_size: int
    eos_token_ids: frozenset[int]
    special_token_ids: frozenset[int]

    def token_bytes(self, i: int) -> bytes: ...


class GrammarError(ValueError):
    """The schema, regex or grammar cannot be compiled; `param` names the request field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param
