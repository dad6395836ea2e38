"""GGUF tokenizers: the embedded SmolLM2 vocabulary against transformers'
tokenizer built from the same file, pre-tokenizer choice on synthetic files,
and SentencePiece vocabularies against sentencepiece itself."""
from __future__ import annotations

import pathlib
from typing import Any

import pytest

from loader_fixtures import gguf, smollm2_gguf, write_tokenizer_only_gguf
from jevons.loader.gguf_reader import open_gguf
from jevons.loader.gguf_tokenizer import load_gguf_tokenizer
from jevons.loader.resolve import resolve_model
from jevons.loader.load import load_tokenizer
from jevons.loader.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hi!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2? 🤔"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3*7, in 日本語?"},
    ],
    [
        {"role": "user", "content": "Write code:\n```py\nprint('x')\n```"},
        {"role": "assistant", "content": "  Done.\n\n"},
    ],
]

TEXTS = [
    "Hello world",
    "The year 2024 had 366 days; pi is 3.14159, a million is 1,000,000.",
    "x=12345;y=-0.5e10",
    "I'm sure you'll say they've, she'd, we're, it's, CAN'T, O'Neil",
    "日本語のテキスト、中文文本 한국어 텍스트",
    "emoji 🤗🚀👍🏽👨‍👩‍👧 and accents é ñ ü ß Ωμέγα Привет",
    "def f(x):\n    return x**2  # square\n\n\nclass A:\n\tpass\n",
    "trailing spaces   \n\n\n  multiple\t\ttabs\r\nwindows\r\n",
    "   leading spaces",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<repo_name>jevons<file_sep>loader.py<|endoftext|>",
    "a<|im_end|>b <|im_start|> c",
    "https://example.com/path?q=1&r=two#frag",
    "",
    " ",
    "\n",
]

# Whitespace runs right before a digit: SmolLM2's tokenizer.json (and llama.cpp's
# "smollm" pre-tokenizer) isolates digits *before* the GPT-2 regex runs, so the
# run stays whole ("ĠĠ", "1"). transformers' GGUF loader has no entry for
# "smollm" and runs the GPT-2 regex alone, which splits it ("Ġ", "Ġ", "1").
WHITESPACE_BEFORE_DIGITS = ["x  1", "[\n    1,\n    2\n]", "a \u00a01b", "total:\t\t42"]


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return load_tokenizer(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def theirs() -> Any:
    path = smollm2_gguf()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def original(theirs: Any) -> Any:
    """transformers' tokenizer with the pre-tokenizer of SmolLM2's own
    tokenizer.json: individual digits, then byte-level GPT-2 splitting."""
    from tokenizers import pre_tokenizers

    backend = theirs.backend_tokenizer
    fixed = type(backend).from_str(backend.to_str())
    fixed.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    return fixed


def _chat_texts(theirs: Any) -> list[str]:
    return [
        theirs.apply_chat_template(c, tokenize=False, add_generation_prompt=g)
        for c in CONVERSATIONS
        for g in (True, False)
    ]


def test_encode_matches_transformers(ours: Tokenizer, theirs: Any) -> None:
    for text in TEXTS + _chat_texts(theirs):
        for special in (True, False):
            expected = theirs(text, add_special_tokens=special)["input_ids"]
            assert ours.encode(text, add_special_tokens=special) == expected, repr(text)


def test_encode_matches_original_pre_tokenizer(ours: Tokenizer, original: Any) -> None:
    for text in TEXTS + WHITESPACE_BEFORE_DIGITS:
        assert ours.encode(text) == original.encode(text, add_special_tokens=False).ids, repr(text)


def test_known_transformers_gguf_divergence(ours: Tokenizer, theirs: Any) -> None:
    """Documents the one difference from transformers' GGUF loader (see above)."""
    assert [ours.id_to_token(i) for i in ours.encode("x  1")] == ["x", "ĠĠ", "1"]
    assert theirs.convert_ids_to_tokens(theirs("x  1")["input_ids"]) == ["x", "Ġ", "Ġ", "1"]
    for text in WHITESPACE_BEFORE_DIGITS:
        assert ours.decode(ours.encode(text)) == theirs.decode(theirs(text)["input_ids"]) == text


def test_special_tokens_are_single_ids(ours: Tokenizer) -> None:
    ids = ours.encode("<|im_start|>assistant\nok<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert ours.encode("<repo_name>") == [3]
    assert ours.special_token_ids == frozenset(range(17))


def test_decode_round_trips(ours: Tokenizer, theirs: Any) -> None:
    for text in TEXTS + _chat_texts(theirs):
        ids = ours.encode(text)
        assert ours.decode(ids, skip_special_tokens=False) == text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids, skip_special_tokens=False)


def test_ids_and_flags(ours: Tokenizer, theirs: Any) -> None:
    assert ours.vocab_size == len(theirs) == 49152
    assert (ours.bos_token_id, ours.eos_token_id) == (1, 2)
    assert (ours.bos_token, ours.eos_token) == (theirs.bos_token, theirs.eos_token)
    assert ours.add_bos is False  # tokenizer.ggml.add_bos_token = false
    # <|im_end|> (eos) and <|endoftext|> both end generation.
    assert ours.eos_token_ids == frozenset({0, 2})
    assert ours.id_to_token(905) == "Ġworld" and ours.id_to_token(10**6) is None


def test_chat_template_matches_transformers(ours: Tokenizer, theirs: Any) -> None:
    assert ours.chat_template == theirs.chat_template
    for conversation in CONVERSATIONS:
        for generation in (True, False):
            expected = theirs.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation)
            assert ours.apply_chat_template(conversation, add_generation_prompt=generation) == expected


# The first 6000 SmolLM2 tokens and the merges among them: a real vocabulary
# that builds in a fraction of the time of the full one. SmolLM2 has no
# multi-digit tokens; adding some lets digit grouping (Llama 3 takes up to
# three, Qwen2 one at a time) show in the ids.
SMALL_VOCAB = 6000
DIGIT_MERGES = [("3", "4"), ("1", "2"), ("12", "3"), ("4", "5")]


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "gpt2"])
def test_pre_tokenizer_regex_choice(tmp_path: pathlib.Path, pre: str) -> None:
    """The same vocabulary under another `tokenizer.ggml.pre` splits text with
    that family's regex (Llama 3: digit triples; Qwen2: single digits; ...),
    exactly as transformers' GGUF loader does for these names."""
    path = tmp_path / f"{pre}.gguf"
    write_tokenizer_only_gguf(path, open_gguf(smollm2_gguf()), pre, SMALL_VOCAB, DIGIT_MERGES)
    ours = load_gguf_tokenizer(path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    extra = ["12345678 123 45 1 12 HELLO'S 'RE\n\n\n  x", "a\r\n\r\nb  \n", ",hello ,World"]
    for text in TEXTS + WHITESPACE_BEFORE_DIGITS + extra:
        assert ours.encode(text) == theirs(text)["input_ids"], (pre, text)
    # The regexes really differ on this vocabulary.
    grouped = [ours.id_to_token(i) for i in ours.encode("x 12345")]
    assert grouped == {"llama-bpe": ["x", "Ġ", "123", "45"], "qwen2": ["x", "Ġ", "1", "2", "3", "4", "5"],
                       "gpt2": ["x", "Ġ", "12", "34", "5"]}[pre]


def test_unknown_pre_tokenizer_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "odd.gguf"
    write_tokenizer_only_gguf(path, open_gguf(smollm2_gguf()), "no-such-pre", vocab_limit=SMALL_VOCAB)
    with pytest.raises(NotImplementedError, match="no-such-pre"):
        load_gguf_tokenizer(path)


# ---- SentencePiece ("llama") vocabularies -------------------------------------

_SP_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tokenizers split text into pieces; pieces become ids.",
    "Numbers like 1234 and 56.78 appear in text too.",
    "Hello world! Hello there, world of tokens.",
    "Inference engines serve language models cheaply.",
] * 40


def _sp_gguf(tmp_path: pathlib.Path) -> tuple[pathlib.Path, Any]:
    """Train a tiny SentencePiece BPE model (byte fallback, like Llama 2) and
    write its pieces, scores and types as llama.cpp's converter does."""
    spm = pytest.importorskip("sentencepiece")
    prefix = tmp_path / "sp"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SP_CORPUS), model_prefix=str(prefix), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, split_digits=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", bos_id=1, eos_id=2, unk_id=0, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=f"{prefix}.model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1)
    path = tmp_path / "sp.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, sp


def test_sentencepiece_vocab_matches_sentencepiece(tmp_path: pathlib.Path) -> None:
    path, sp = _sp_gguf(tmp_path)
    ours = load_gguf_tokenizer(path)
    assert ours.add_bos and ours.bos_token_id == 1  # llama.cpp's default for SentencePiece
    texts = ["Hello world", "The lazy fox serves tokens.", "  two leading spaces", "digits 2024",
             "unseen: 日本 🤗 zebra", "end with space ", "a\nb"]
    for text in texts:
        expected = [1, *sp.encode(text)]
        assert ours.encode(text) == expected, text
        assert ours.decode(expected) == sp.decode(expected[1:]), text


def test_deepseek_v3_pre_tokenizer_groups(tmp_path: pathlib.Path) -> None:
    """DeepSeek-V3's splits: digits in runs of at most three, CJK runs whole,
    one punctuation mark glued to the ASCII word after it."""
    path = tmp_path / "ds.gguf"
    write_tokenizer_only_gguf(path, open_gguf(smollm2_gguf()), "deepseek-v3", SMALL_VOCAB, DIGIT_MERGES)
    tok = load_gguf_tokenizer(path)
    pieces = tok.backend.pre_tokenizer.pre_tokenize_str("ab 1234567 日本語x .foo,bar")
    assert [p for p, _ in pieces] == ["ab", "Ġ", "123", "456", "7", "Ġ", "æĹ¥æľ¬èªŀ", "x", "Ġ.", "foo", ",bar"]
    for text in TEXTS:
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
