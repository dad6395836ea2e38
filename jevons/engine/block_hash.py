"""Chained block hashes for the prefix cache.

A block's key covers its parent's key, its token ids and any extra keys (the
model fingerprint, later LoRA or multimodal ids). Hits are never re-checked
against tokens, so the key must be collision-safe on its own:

- It is SHA-256 over (parent key, tokens, extra). Because the parent key is
  itself such a digest, a key commits to the whole token prefix, not just one
  block: two different prefixes share a key only through a SHA-256 collision.
  With N cached blocks the chance of any accidental collision is about
  N^2 / 2^257 (10^12 blocks: ~10^-53), far below the rate of memory bit flips.
  Deliberately finding one is beyond any known attack on SHA-256.
- Token ids are packed as fixed-width int64 (no separators to confuse), and
  each block's token count is fixed by the block size, so distinct token
  sequences always give distinct byte strings to the hash.
- The extra key is the model/config fingerprint (cache_fingerprint.py): KV
  computed by another model, dtype, block size or cache layout can never be
  found under this engine's keys, on the device or on disk.
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
