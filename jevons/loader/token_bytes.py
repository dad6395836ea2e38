"""The raw bytes a token stands for, as OpenAI's logprobs report them.

A token can be part of a UTF-8 character (one byte of a CJK character or an
emoji): decoded on its own it is U+FFFD, whose UTF-8 is not the token's bytes.
Clients that rebuild text from logprobs (`bytes` of consecutive tokens
concatenated) need the real bytes, so they are read from the vocabulary piece
through the tokenizer's byte scheme:

- byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM): every byte is spelled with
  one printable character; the piece maps back through that table;
- sentencepiece with byte fallback (Llama 2, Mistral): `<0xHH>` is that byte,
  other pieces are text with U+2581 for a space.

Added (special) tokens, and any other scheme, give their decoded text's UTF-8.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable

from tokenizers import Tokenizer as BackendTokenizer

_FALLBACK_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_table() -> dict[str, int]:
    """Character -> byte for byte-level BPE: printable Latin-1 bytes spell
    themselves; the other 68 bytes take the code points from 256 up, in byte
    order (the scheme GPT-2 introduced)."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    table = {chr(b): b for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in printable):
        table[chr(256 + n)] = b
    return table


_BYTE_LEVEL = _byte_level_table()


def _scheme(backend: BackendTokenizer) -> str:
    """"byte_level", "byte_fallback" or "text", from the tokenizer's decoder."""
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, TypeError):
        return "text"
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    types = {p.get("type") for p in parts if isinstance(p, dict)}
    if "ByteLevel" in types:
        return "byte_level"
    if "ByteFallback" in types:
        return "byte_fallback"
    return "text"


def token_bytes_reader(backend: BackendTokenizer, decode: Callable[[int], str]) -> Callable[[int], bytes]:
    """A function token id -> its bytes; `decode` renders one token as text
    (used for added tokens and unknown schemes)."""
    scheme = _scheme(backend)
    added = set(backend.get_added_tokens_decoder())

    def token_bytes(i: int) -> bytes:
        piece = backend.id_to_token(i)
        if piece is None or i in added:
            return decode(i).encode("utf-8")
        if scheme == "byte_level" and all(c in _BYTE_LEVEL for c in piece):
            return bytes(_BYTE_LEVEL[c] for c in piece)
        if scheme == "byte_fallback":
            m = _FALLBACK_PIECE.fullmatch(piece)
            return bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode("utf-8")
        return decode(i).encode("utf-8")

    return token_bytes
