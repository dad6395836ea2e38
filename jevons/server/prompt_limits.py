"""Prompts are built and tokenized off the event loop, after a length check.

Tokenizing a few megabytes takes seconds and a chat template is Python code:
on the event loop either stalls /health and every other stream. The routes
run both in a worker thread (`off_loop`); the tokenizer lets go of the GIL
while it works (loader/tokenizer.py), so the loop keeps running meanwhile.

Before tokenizing, a prompt's length in characters is checked against the
most characters any prompt of `max_model_len` tokens can have:
`max_model_len` times the longest piece in the vocabulary (in characters; a
byte-level piece has one character per byte, so this bounds any text's
characters too), times 4 if a Unicode normalizer may compose characters (NFC
turns up to four code points into one). A longer prompt cannot fit, whatever
the tokenizer does with it: 400 `context_length_exceeded` without
tokenizing. The bound is only drawn where it holds for every text: a BPE
model that neither fuses unknown characters nor drops any (no whitespace-
splitting pre-tokenizer, no normalizer that strips or shortens, no added
token that swallows the spaces around it); other tokenizers get no character
check, only the body-size limit (edges.py). For the embedded SmolLM2 (8192
tokens, longest piece 81) the bound is 663,552 characters."""
from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any, Callable, TypeVar

from jevons.server.errors import APIError

T = TypeVar("T")

# tokenizer -> chars_per_token, worked out once (it reads the vocabulary).
_bounds: "weakref.WeakKeyDictionary[Any, int | None]" = weakref.WeakKeyDictionary()


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` in a worker thread; its exceptions (APIError included) come back here."""
    return await asyncio.to_thread(fn, *args)


def _components(node: Any) -> list[dict[str, Any]]:
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        return [c for part in node.get("normalizers") or node.get("pretokenizers") or [] for c in _components(part)]
    return [node]


_DROPPING_PRE_TOKENIZERS = frozenset({"Whitespace", "WhitespaceSplit", "BertPreTokenizer", "CharDelimiterSplit"})
_COMPOSING = frozenset({"NFC", "NFKC"})
_LENGTH_KEEPING = frozenset({"NFD", "NFKD", "Lowercase", "Prepend"})


def chars_per_token(spec: dict[str, Any], longest_piece: int | None = None) -> int | None:
    """The most characters of input one token can stand for, from a
    tokenizer.json; None when no such bound holds (see the module's doc).
    longest_piece: the vocabulary's longest piece when the caller knows it
    (then spec's vocab is not read)."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or (model.get("fuse_unk") and not model.get("byte_fallback")):
        return None  # Unigram, WordPiece, WordLevel: one unknown token can stand for a whole word
    for c in _components(spec.get("pre_tokenizer")):
        if c.get("type") in _DROPPING_PRE_TOKENIZERS or str(c.get("behavior", "")).lower() == "removed":
            return None
    slack = 1
    for c in _components(spec.get("normalizer")):
        kind = c.get("type")
        if kind in _COMPOSING:
            slack = 4  # the longest canonical decomposition is four code points (U+1F86)
        elif kind == "Replace":
            pattern = (c.get("pattern") or {}).get("String")
            if pattern is None or len(c.get("content") or "") < len(pattern):
                return None  # a regex, or a replacement shorter than what it replaces
        elif kind not in _LENGTH_KEEPING:
            return None  # Strip, StripAccents, BertNormalizer, Precompiled, ...: may drop characters
    added = spec.get("added_tokens") or []
    if any(a.get("lstrip") or a.get("rstrip") for a in added):
        return None  # such a token swallows the whitespace around it
    vocab = model.get("vocab") or {}
    pieces = [a.get("content", "") for a in added] + ([] if longest_piece is not None else [*vocab])
    longest = max([len(p) for p in pieces] + [longest_piece or 0])
    return longest * slack or None


def _chars_per_token(tokenizer: Any) -> int | None:
    try:
        return _bounds[tokenizer]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable: work it out each time
        return _read_bound(tokenizer)
    n = _bounds[tokenizer] = _read_bound(tokenizer)
    return n


def _read_bound(tokenizer: Any) -> int | None:
    backend = getattr(tokenizer, "backend", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None  # e.g. the id tokenizer of a config-only preset
    longest = getattr(tokenizer, "longest_piece", None)
    try:
        return chars_per_token(_spec(backend, vocab=longest is None), longest)
    except (ValueError, TypeError, AttributeError):
        return None


def _spec(backend: Any, vocab: bool = True) -> dict[str, Any]:
    """The parts of the tokenizer.json chars_per_token reads, without the
    merges: serializing all of a 151k-token BPE and parsing it back cost the
    first request 0.2 s; its vocab alone is half that, and is skipped where
    the loader knows the longest piece (a GGUF's byte-level BPE). The whole
    JSON where the backend's model does not say what it is."""
    model = backend.model
    kind = type(model).__name__
    if kind != "BPE" or not hasattr(model, "fuse_unk") or not hasattr(model, "byte_fallback"):
        return json.loads(backend.to_str())

    def state(node: Any) -> Any:
        return None if node is None else json.loads(node.__getstate__())
    added = [{"content": a.content, "lstrip": a.lstrip, "rstrip": a.rstrip}
             for a in backend.get_added_tokens_decoder().values()]
    return {"model": {"type": kind, "fuse_unk": model.fuse_unk, "byte_fallback": model.byte_fallback,
                      "vocab": backend.get_vocab(with_added_tokens=False) if vocab else {}},
            "pre_tokenizer": state(backend.pre_tokenizer), "normalizer": state(backend.normalizer),
            "added_tokens": added}


def prompt_char_limit(tokenizer: Any, max_model_len: int) -> int | None:
    """The most characters a prompt that fits in `max_model_len` tokens can have; None: no bound known."""
    per_token = _chars_per_token(tokenizer)
    return None if not per_token else max_model_len * per_token


def check_prompt_chars(chars: int, tokenizer: Any, max_model_len: int, param: str) -> None:
    """400 context_length_exceeded when a prompt of `chars` characters cannot fit."""
    limit = prompt_char_limit(tokenizer, max_model_len)
    if limit is not None and chars > limit:
        raise APIError(
            400, f"This model's maximum context length is {max_model_len} tokens. However, your prompt is "
                 f"{chars} characters long, more than any prompt of {max_model_len} tokens can be "
                 f"({limit} characters with this tokenizer). Please reduce the length of the prompt.",
            param=param, code="context_length_exceeded")
