"""Rebuild a `tokenizers` tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.

A GGUF carries no tokenizer.json, only the pieces: the token list (id order),
token types, BPE merges or SentencePiece scores, special ids, and the name of
the pre-tokenizer (`tokenizer.ggml.pre`). The split regexes below are the ones
llama.cpp uses for each name, which are those of the original tokenizer.json.
"""
from __future__ import annotations

import pathlib
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from jevons.loader.gguf_reader import GGUFFile, open_gguf
from jevons.loader.tokenizer import Tokenizer

# llama.cpp token types
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEEPSEEK3 = (
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)

# DeepSeek-LLM / V2 / V2-Lite ('deepseek-llm'): letters, punctuation, CJK and
# digit runs split apart (llama-vocab.cpp's LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM).
_DEEPSEEK_LLM = (
    '[\r\n]',
    '\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+',
    '\\s?[!-/:-~！-／：-～‘-‟\u3000-。]+',
    '\\s+$',
    '[一-龥ࠀ-一가-\ud7ff]+',
    '\\p{N}+',
)

# tokenizer.ggml.pre -> regexes applied in turn (each splits the pieces of the
# last). StarCoder-family vocabularies (SmolLM) isolate every digit first.
_PRE_SPLITS: dict[str, tuple[str, ...]] = {
    "default": (_GPT2,),
    "gpt2": (_GPT2,),
    "gpt-2": (_GPT2,),
    "smollm": (r"\p{N}", _GPT2),
    "starcoder": (r"\p{N}", _GPT2),
    "refact": (r"\p{N}", _GPT2),
    "llama3": (_LLAMA3,),
    "llama-v3": (_LLAMA3,),
    "llama-bpe": (_LLAMA3,),
    "smaug-bpe": (_LLAMA3,),
    "falcon3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "deepseek-r1-qwen": (_QWEN2,),
    "deepseek-v3": _DEEPSEEK3,
    "deepseek-llm": _DEEPSEEK_LLM,
}

# Llama-3-style vocabularies take a whole pre-token from the vocab before
# merging (tokenizer.json's `ignore_merges`); llama.cpp does the same for them.
_IGNORE_MERGES = frozenset({"llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3"})


def _added_tokens(tokens: list[str], types: list[int]) -> list[AddedToken]:
    """Control tokens become special added tokens and user-defined ones plain
    added tokens, so each is matched whole in text (`<|im_start|>` stays one id)
    instead of being split into bytes."""
    added = []
    for token, kind in zip(tokens, types, strict=False):  # types may be absent
        if kind in (_CONTROL, _USER_DEFINED):
            added.append(AddedToken(token, special=kind == _CONTROL, normalized=False))
    return added


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)  # on a duplicate spelling, the first id wins
    return vocab


def _byte_level_bpe(meta: dict[str, Any]) -> BackendTokenizer:
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    if pre not in _PRE_SPLITS:
        raise NotImplementedError(
            f"GGUF pre-tokenizer {pre!r} is not supported (supported: {sorted(_PRE_SPLITS)})"
        )
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    model = models.BPE(
        vocab=_vocab(meta["tokenizer.ggml.tokens"]),
        merges=merges,
        ignore_merges=pre in _IGNORE_MERGES,
    )
    backend = BackendTokenizer(model)
    splits = [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in _PRE_SPLITS[pre]]
    # Byte-level mapping only: the splitting was done by the regexes above.
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.pre_tokenizer = pre_tokenizers.Sequence([*splits, byte_level])
    backend.decoder = decoders.ByteLevel()
    return backend


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """SentencePiece-BPE merges, recovered from scores: llama.cpp merges the
    adjacent pair whose joined token scores highest, which is BPE with merges
    ranked by the score of their result."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] in (_NORMAL, _USER_DEFINED)}
    ranked: list[tuple[float, int, str, str]] = []
    for token, i in vocab.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[i], i, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def _sentencepiece_bpe(meta: dict[str, Any]) -> BackendTokenizer:
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    scores: list[float] = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    model = models.BPE(
        vocab=_vocab(tokens),
        merges=_spm_merges(tokens, scores, types),
        unk_token=tokens[unk] if unk is not None else None,
        byte_fallback=True,  # unseen characters become <0xNN> byte tokens
        fuse_unk=True,
    )
    backend = BackendTokenizer(model)
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    steps = [normalizers.Prepend("▁")] if prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence([*dec, decoders.Strip(" ", 1, 0)] if prefix else dec)
    return backend


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def gguf_tokenizer(f: GGUFFile, name: str = "") -> Tokenizer:
    meta = f.metadata
    kind = meta.get("tokenizer.ggml.model")
    if kind == "gpt2":
        backend = _byte_level_bpe(meta)
        default_add_bos = False
    elif kind == "llama":
        backend = _sentencepiece_bpe(meta)
        default_add_bos = True  # llama.cpp adds BOS for SentencePiece unless told otherwise
    else:
        raise NotImplementedError(
            f"GGUF tokenizer model {kind!r} is not supported (supported: 'gpt2' byte-level BPE, "
            f"'llama' SentencePiece)"
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or []
    added = _added_tokens(tokens, types)
    backend.add_special_tokens([t for t in added if t.special])
    backend.add_tokens([t for t in added if not t.special])

    extra_eos = [
        int(meta[key])
        for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
        if meta.get(key) is not None
    ]
    return Tokenizer(
        backend,
        bos_token_id=_int_or_none(meta.get("tokenizer.ggml.bos_token_id")),
        eos_token_id=_int_or_none(meta.get("tokenizer.ggml.eos_token_id")),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", default_add_bos)),
        add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        extra_eos_ids=extra_eos,
        pad_token_id=_int_or_none(meta.get("tokenizer.ggml.padding_token_id")),
        unk_token_id=_int_or_none(meta.get("tokenizer.ggml.unknown_token_id")),
        chat_template=meta.get("tokenizer.chat_template"),
        name=name,
        # byte-level BPE: the vocabulary and the added tokens are these very strings
        longest_piece=max(map(len, tokens), default=0) if kind == "gpt2" else None,
    )


def load_gguf_tokenizer(path: pathlib.Path, name: str = "") -> Tokenizer:
    return gguf_tokenizer(open_gguf(path), name=name)
