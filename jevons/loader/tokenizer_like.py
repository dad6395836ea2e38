"""The tokenizer contract, as a `typing.Protocol`: what the engine, the server
and the CLIs use of a tokenizer. loader/tokenizer.py's Tokenizer and
loader/id_tokenizer.py's stand-in satisfy it (tests/test_interfaces.py)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TokenizerLike(Protocol):
    """What the engine, the server and the CLIs use of a tokenizer
    (loader/tokenizer.py's Tokenizer; loader/id_tokenizer.py's stand-in)."""

    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None
    eos_token_ids: frozenset[int]
    special_token_ids: frozenset[int]
    chat_template: str | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def id_to_token(self, i: int) -> str | None: ...

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: Any) -> str: ...
