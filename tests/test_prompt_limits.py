"""The character bound on a prompt that lets the server refuse one too long to
fit before tokenizing it (jevons/server/prompt_limits.py): where it applies,
and that it never refuses a prompt that fits."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jevons.server.prompt_limits import chars_per_token, prompt_char_limit


def _spec(model=None, normalizer=None, pre=None, added=()):
    return {"model": {"type": "BPE", "vocab": {"a": 0, "abcd": 1}, **(model or {})}, "normalizer": normalizer,
            "pre_tokenizer": pre, "added_tokens": list(added)}


def test_chars_per_token_only_where_it_bounds_every_text():
    assert chars_per_token(_spec()) == 4
    assert chars_per_token(_spec(added=[{"content": "<|im_start|>", "lstrip": False, "rstrip": False}])) == 12
    assert chars_per_token(_spec(normalizer={"type": "NFC"})) == 16  # NFC composes up to four code points
    keep = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "_"},
                                               {"type": "Replace", "pattern": {"String": " "}, "content": "_"}]}
    assert chars_per_token(_spec(normalizer=keep)) == 4
    for bad in (
        _spec(model={"type": "Unigram"}),
        _spec(model={"fuse_unk": True}),
        _spec(normalizer={"type": "Strip"}),
        _spec(normalizer={"type": "Replace", "pattern": {"Regex": " +"}, "content": " "}),
        _spec(normalizer={"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "StripAccents"}]}),
        _spec(pre={"type": "Whitespace"}),
        _spec(pre={"type": "Sequence", "pretokenizers": [{"type": "Split", "behavior": "Removed"}]}),
        _spec(added=[{"content": "<mask>", "lstrip": True}]),
    ):
        assert chars_per_token(bad) is None, bad


@pytest.fixture(scope="module")
def tokenizers(tiny_llama):
    from jevons.loader.resolve import resolve_model
    from jevons.loader.load import load_tokenizer

    return [load_tokenizer(resolve_model(str(tiny_llama))), load_tokenizer(resolve_model("smollm2-135m-instruct"))]


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(codec="utf-8"), max_size=300) | st.builds(lambda c, n: c * n, st.sampled_from(
    [" ", "\n", "=", "#", "-", "🙂", "汉", "e\u0301", "    ", "\t"]), st.integers(1, 400)))
def test_the_char_bound_never_refuses_a_prompt_that_fits(tokenizers, text):
    """Whatever the text, it has at most (its tokens x chars_per_token) characters."""
    for tok in tokenizers:
        n = len(tok.encode(text, add_special_tokens=False))
        assert len(text) <= max(n, 1) * prompt_char_limit(tok, 1), (tok.name, n)


def test_the_bound_read_without_the_merges_is_the_whole_jsons(tokenizers):
    """prompt_limits reads only the vocabulary and the small parts (no merges, no JSON round trip of
    the whole tokenizer): the same bound as from the tokenizer.json, for BPE and for anything else."""
    import json

    from tokenizers import Tokenizer, models, normalizers

    from jevons.server import prompt_limits

    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    nfc = Tokenizer(models.BPE({"a": 0, "abc": 1}, []))
    nfc.normalizer = normalizers.NFC()
    for backend in [t.backend for t in tokenizers] + [wordpiece, nfc]:
        assert prompt_limits.chars_per_token(prompt_limits._spec(backend)) == \
            prompt_limits.chars_per_token(json.loads(backend.to_str()))
    assert prompt_limits.chars_per_token(prompt_limits._spec(nfc)) == 12
    # A GGUF's byte-level BPE tokenizer knows its longest piece: no vocabulary read back, the same bound.
    assert any(t.longest_piece is not None for t in tokenizers)
    for tok in tokenizers:
        assert prompt_limits._read_bound(tok) == prompt_limits.chars_per_token(json.loads(tok.backend.to_str()))
