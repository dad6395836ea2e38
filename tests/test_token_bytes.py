"""Logprob `bytes` are a token's raw bytes, also for part of a UTF-8
character (loader/token_bytes.py)."""
from __future__ import annotations

import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models

from jevons.loader.token_bytes import token_bytes_reader

TEXT = "日本 🙂 naïve"


def _reader(backend: BackendTokenizer):
    return token_bytes_reader(backend, lambda t: backend.decode([t], skip_special_tokens=False))


def test_byte_level_pieces_join_to_the_text():
    from jevons.loader.resolve import ModelNotFoundError, resolve_model
    from jevons.loader.load import load_tokenizer

    try:
        tok = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    ids = tok.encode(TEXT, add_special_tokens=False)
    parts = [tok.token_bytes(i) for i in ids]
    assert b"".join(parts) == TEXT.encode("utf-8")
    assert any(tok.decode([i]) == "\ufffd" for i in ids)  # some token is part of a character
    eot = tok.encode("<|im_end|>", add_special_tokens=False)
    assert [tok.token_bytes(i) for i in eot] == [b"<|im_end|>"]  # special tokens: their text


def test_byte_fallback_pieces():
    vocab = {"<unk>": 0, "\u2581na": 1, "<0xC3>": 2, "<0xAF>": 3, "ve": 4}
    backend = BackendTokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    read = _reader(backend)
    assert [read(i) for i in (1, 2, 3, 4)] == [b" na", b"\xc3", b"\xaf", b"ve"]
    assert b"".join(read(i) for i in (1, 2, 3, 4)).decode() == " naïve"


def test_unknown_schemes_use_the_decoded_text():
    backend = BackendTokenizer(models.WordLevel(vocab={"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    assert _reader(backend)(1) == b"hello"


def test_chat_logprobs_report_raw_bytes():
    from jevons.outputs import Logprob
    from jevons.server.logprobs import chat_logprobs

    lps = [{7: Logprob(-0.5, 1, "\ufffd", b"\xe6\x97")}, {8: Logprob(-0.1, 1, "x")}]
    out = chat_logprobs([7, 8], lps, 1)
    assert out[0]["bytes"] == [0xE6, 0x97] and out[0]["top_logprobs"][0]["bytes"] == [0xE6, 0x97]
    assert out[1]["bytes"] == [ord("x")]  # no raw bytes recorded: the text's UTF-8
