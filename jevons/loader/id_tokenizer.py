"""A stand-in tokenizer for config-only presets run with dummy weights.

Performance and memory work on a preset (`LLM("deepseek-v2-lite",
load_format="dummy")`) needs token ids, not text: there is no tokenizer to
load, so ids decode to `<id>` markers and text encodes to one id per byte."""
from __future__ import annotations

from collections.abc import Sequence


class IdTokenizer:
    chat_template: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    eos_token_ids: frozenset[int] = frozenset()
    special_token_ids: frozenset[int] = frozenset()
    add_bos = False

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [b % self.vocab_size for b in text.encode()]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(f"<{int(i)}>" for i in ids)

    def id_to_token(self, i: int) -> str | None:
        return f"<{i}>"

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        raise ValueError("a config-only preset has no tokenizer or chat template; send prompt_token_ids")
