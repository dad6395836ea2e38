"""The <think> splitter on text streams cut at every position: however the
tags fall across tokens, the result equals the one-shot parse."""
from __future__ import annotations

import itertools

import pytest

from jevons.engine.reasoning import ReasoningParser, prompt_ends_in_think, reasoning_enabled

CASES = [
    # (starts inside <think>, generated text, expected reasoning, expected content)
    (False, "<think>\nLet me think.\n</think>\n\nThe answer is 4.", "Let me think.\n", "The answer is 4."),
    (True, "Let me think.\n</think>\n\nThe answer is 4.", "Let me think.\n", "The answer is 4."),
    (True, "\n<think>\nrepeated tag</think>answer", "repeated tag", "answer"),
    (False, "No thinking here, <think> is just text.", "", "No thinking here, <think> is just text."),
    (False, "  \n<think>a < b </thin and </ still thinking</think>done", "a < b </thin and </ still thinking", "done"),
    (True, "cut off while thinking </thi", "cut off while thinking </thi", ""),
    (False, "<thin", "", "<thin"),
    (False, "<think>", "", ""),
    (True, "</think>", "", ""),
    (False, "", "", ""),
    (True, "x</think>y</think>z", "x", "y</think>z"),
    (False, "<think>多语言 🙂</think>答案", "多语言 🙂", "答案"),
]


def run(starts: bool, pieces: list[str]) -> tuple[str, str]:
    p = ReasoningParser(starts)
    r, c = [], []
    for i, piece in enumerate(pieces):
        a, b = p.feed(piece, final=i == len(pieces) - 1)
        r.append(a)
        c.append(b)
    if not pieces:
        a, b = p.feed("", final=True)
        r.append(a)
        c.append(b)
    return "".join(r), "".join(c)


@pytest.mark.parametrize("starts,text,reasoning,content", CASES)
def test_one_shot(starts, text, reasoning, content):
    assert run(starts, [text]) == (reasoning, content)


@pytest.mark.parametrize("starts,text,reasoning,content", CASES)
def test_split_at_every_position(starts, text, reasoning, content):
    for i in range(len(text) + 1):
        assert run(starts, [text[:i], text[i:]]) == (reasoning, content), f"split at {i}"


@pytest.mark.parametrize("starts,text,reasoning,content", CASES)
def test_split_at_every_pair_of_positions(starts, text, reasoning, content):
    for i, j in itertools.combinations(range(len(text) + 1), 2):
        pieces = [text[:i], text[i:j], text[j:]]
        assert run(starts, pieces) == (reasoning, content), f"split at {i}, {j}"


@pytest.mark.parametrize("starts,text,reasoning,content", CASES)
def test_one_character_at_a_time(starts, text, reasoning, content):
    assert run(starts, list(text)) == (reasoning, content)


def test_nothing_is_released_that_could_still_be_a_tag():
    p = ReasoningParser(True)
    assert p.feed("abc</th") == ("abc", "")
    assert p.in_reasoning
    assert p.feed("ink>") == ("", "")
    assert not p.in_reasoning
    assert p.feed("\n\nhello") == ("", "hello")

    p = ReasoningParser(False)
    assert p.feed("<thi") == ("", "")  # might be <think>: wait
    assert p.feed("s is text") == ("", "<this is text")


def test_token_stream_of_a_real_vocabulary(tiny_llama):
    """Pieces as a byte-level BPE tokenizer cuts them (tags are several tokens)."""
    from jevons.loader.resolve import resolve_model
    from jevons.loader.load import load_tokenizer

    tok = load_tokenizer(resolve_model(str(tiny_llama)))
    text = "<think>\nThe quick brown fox.\n</think>\n\nPaged attention keeps blocks."
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > 10
    pieces = [tok.decode(ids[:i + 1]) [len(tok.decode(ids[:i])):] for i in range(len(ids))]
    assert "".join(pieces) == text
    assert run(False, pieces) == ("The quick brown fox.\n", "Paged attention keeps blocks.")


def test_prompt_prefill_detection():
    assert prompt_ends_in_think("<|im_start|>assistant\n<think>\n")
    assert not prompt_ends_in_think("<|im_start|>assistant\n")
    # Qwen3 with thinking disabled writes an empty, closed block.
    assert not prompt_ends_in_think("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert prompt_ends_in_think("old <think>a</think> turn, then <think>")


class _Tok:
    def __init__(self, vocab: set[str]) -> None:
        self.vocab = vocab

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [1] if text in self.vocab else [1, 2, 3]


def test_auto_detection():
    assert reasoning_enabled("auto", _Tok({"<think>", "</think>"}))
    assert not reasoning_enabled("auto", _Tok(set()))
    assert reasoning_enabled("deepseek_r1", _Tok(set()))
    assert not reasoning_enabled("none", _Tok({"<think>", "</think>"}))
    with pytest.raises(ValueError):
        reasoning_enabled("qwen9", _Tok(set()))
