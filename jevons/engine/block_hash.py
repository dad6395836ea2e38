"""Chained block hashes for the prefix cache.

A block's key covers its parent's key, its token ids and any extra keys (the
model fingerprint, later LoRA or multimodal ids). SHA-256 makes an accidental
collision practically impossible, so a hit never needs the tokens re-checked.
"""
from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

ROOT_HASH = b"jevons-prefix-root"


def hash_block(parent: bytes | None, tokens: Sequence[int], extra: bytes = b"") -> bytes:
    h = hashlib.sha256()
    h.update(parent or ROOT_HASH)
    h.update(array("q", tokens).tobytes())
    h.update(extra)
    return h.digest()


def extend_block_hashes(
    hashes: list[bytes], token_ids: Sequence[int], block_size: int, extra: bytes = b""
) -> None:
    """Append hashes for every newly full block of token_ids (in place)."""
    full = len(token_ids) // block_size
    for i in range(len(hashes), full):
        parent = hashes[i - 1] if i else None
        hashes.append(hash_block(parent, token_ids[i * block_size : (i + 1) * block_size], extra))
