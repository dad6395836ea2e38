"""engine/stopping.py on its own, with a byte-level tokenizer (ids 0-255 are
bytes, 256 is EOS): every stop rule decided once per token, stop strings
across tokens and inside accepted drafts, what streaming may release, the
min_tokens ban, the reasoning budget and a complete grammar."""
from __future__ import annotations

import pytest

from jevons.engine.reasoning import ReasoningBudget
from jevons.engine.request import Request
from jevons.engine.stopping import LENGTH, STOP, Finish, Stopping
from jevons.sampling_params import SamplingParams

EOS = 256
THINK, END_THINK, NL2 = 300, 301, 302


class Bytes:
    """Token id = one byte; EOS and the think tags decode to nothing here."""

    def decode(self, ids, skip_special_tokens=True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def ids(text: str) -> list[int]:
    return list(text.encode())


def make(params: SamplingParams, prompt: list[int] | None = None, max_model_len: int = 1000, max_tokens=None,
         budget=None, grammar=None) -> tuple[Stopping, Request]:
    prompt = prompt or ids("Q: ")
    req = Request("r", prompt, params, max_tokens or params.max_tokens or max_model_len - len(prompt),
                  frozenset({EOS}))
    stopping = Stopping(Bytes(), max_model_len, budget, grammar)
    stopping.add(req)
    return stopping, req


def run(stopping: Stopping, req: Request, steps: list[list[int]]) -> tuple[list[str], Finish | None]:
    """Feed each step's sampled tokens as the engine does (decide, append the
    kept ones); returns the text released after each step and the finish."""
    released = []
    for sampled in steps:
        v = stopping.decide(req, sampled)
        for t in v.tokens:
            req.append_token(t)
        released.append(stopping.release("r", v.finish is not None))
        if v.finish is not None:
            return released, v.finish
    return released, None


def test_a_stop_string_across_tokens_is_cut_and_never_streamed():
    s, req = make(SamplingParams(max_tokens=50, stop=["lo w"]))
    released, finish = run(s, req, [[t] for t in ids("hello world")])
    assert finish == Finish(STOP, "lo w")
    assert "".join(released) == "hel"
    assert req.output_token_ids == ids("hello w")  # the token that completed it is the last kept
    # Each piece streamed is final: nothing released is later cut.
    assert all(not r or "hel".startswith("".join(released[: i + 1])) for i, r in enumerate(released))


def test_include_stop_str_in_output_keeps_it():
    s, req = make(SamplingParams(max_tokens=50, stop=["lo w"], include_stop_str_in_output=True))
    released, finish = run(s, req, [[t] for t in ids("hello world")])
    assert "".join(released) == "hello w" and finish.stop_reason == "lo w"


def test_earliest_of_several_stop_strings_wins():
    s, req = make(SamplingParams(max_tokens=50, stop=["world", "o w"]))
    released, finish = run(s, req, [ids("hello world")])
    assert finish == Finish(STOP, "o w") and "".join(released) == "hell"


def test_a_stop_inside_accepted_drafts_drops_the_rest():
    s, req = make(SamplingParams(max_tokens=50, stop=["cd"]))
    v = s.decide(req, ids("abcdef"))
    assert v.tokens == ids("abcd") and v.finish == Finish(STOP, "cd") and v.num_sampled == 6
    s, req = make(SamplingParams(max_tokens=50, stop_token_ids=[ord("c")]))
    v = s.decide(req, ids("abcdef"))
    assert v.tokens == ids("abc") and v.finish == Finish(STOP, ord("c"))
    s, req = make(SamplingParams(max_tokens=2))
    v = s.decide(req, ids("abcdef"))
    assert v.tokens == ids("ab") and v.finish == Finish(LENGTH)


def test_token_rules_eos_stop_ids_min_tokens_ignore_eos():
    s, req = make(SamplingParams(max_tokens=10, min_tokens=2, stop_token_ids=[ord("x")]))
    assert s.banned(req) == [ord("x"), EOS]
    assert s.decide(req, [EOS]).finish is None  # the 1st token, under min_tokens (were it drawn anyway)
    req.append_token(EOS)
    assert s.banned(req) == [ord("x"), EOS]  # the next draw is the 2nd: still banned
    assert s.decide(req, [ord("x")]).finish == Finish(STOP, ord("x"))  # the 2nd token may stop min_tokens=2
    req.append_token(ord("x"))
    assert s.banned(req) == []
    s, req = make(SamplingParams(max_tokens=10))
    assert s.decide(req, [ord("a"), EOS, ord("b")]).tokens == [ord("a"), EOS]
    s, req = make(SamplingParams(max_tokens=10, ignore_eos=True, min_tokens=1, stop_token_ids=[7]))
    assert s.banned(req) == [7]  # EOS is not a stop, so not banned either
    assert s.decide(req, [EOS, EOS, 7]).tokens == [EOS, EOS, 7]


def test_length_by_max_tokens_and_by_context():
    s, req = make(SamplingParams(max_tokens=3))
    released, finish = run(s, req, [[ord("a")], [ord("b")], [ord("c")], [ord("d")]])
    assert finish == Finish(LENGTH) and req.output_token_ids == ids("abc") and "".join(released) == "abc"
    s, req = make(SamplingParams(max_tokens=None), prompt=ids("0123"), max_model_len=6)
    assert s.decide(req, ids("abc")).tokens == ids("ab")


def test_a_stop_string_beats_length_on_the_same_token():
    s, req = make(SamplingParams(max_tokens=3, stop=["bc"]))
    released, finish = run(s, req, [ids("abc")])
    assert finish == Finish(STOP, "bc") and "".join(released) == "a"


def test_held_utf8_bytes_and_the_stop_hold_back():
    s, req = make(SamplingParams(max_tokens=50, stop=["é!"]))
    e_acute = ids("é")  # two bytes: the first alone decodes to nothing yet
    v = s.decide(req, [ord("a"), e_acute[0]])
    assert v.finish is None and s.release("r", False) == ""  # the last character is held (len("é!") - 1)
    v = s.decide(req, [e_acute[1]])
    assert s.release("r", False) == "a"  # "é" could start "é!": held
    v = s.decide(req, [ord("?")])
    assert s.release("r", False) == "é"
    v = s.decide(req, ids("é!x"))
    assert v.finish == Finish(STOP, "é!") and v.tokens == ids("é!") and s.release("r", True) == "?"


def test_n_sequences_keep_their_own_state():
    params = SamplingParams(n=2, max_tokens=20, stop=["ab"])
    s = Stopping(Bytes(), 100)
    reqs = [Request(f"r#{i}", ids("Q"), params, 20, frozenset({EOS}), "r", i) for i in range(2)]
    for r in reqs:
        s.add(r)
    assert s.decide(reqs[0], [ord("a")]).finish is None
    assert s.decide(reqs[1], [ord("b")]).finish is None  # no "ab" across siblings
    assert s.decide(reqs[0], [ord("b")]).finish == Finish(STOP, "ab")


def encode(text: str) -> list[int]:
    return {"<think>": [THINK], "</think>": [END_THINK], "\n\n": [NL2]}[text]


def test_the_reasoning_budget_forces_the_block_closed():
    budget = ReasoningBudget(encode)
    s, req = make(SamplingParams(max_tokens=20, max_reasoning_tokens=2, ignore_eos=True),
                  prompt=ids("Q") + [THINK], budget=budget)  # the template opened the block
    got = []
    for t in ids("abcdef"):
        v = s.decide(req, [t])
        req.append_token(v.tokens[0])
        got += v.tokens
    assert got == [ord("a"), ord("b"), END_THINK, NL2, ord("e"), ord("f")]
    # Opened by the model itself: counted from its first thinking token.
    s, req = make(SamplingParams(max_tokens=20, max_reasoning_tokens=1), budget=budget)
    out = []
    for t in [THINK, ord("a"), ord("b"), ord("c")]:
        v = s.decide(req, [t])
        req.append_token(v.tokens[0])
        out += v.tokens
    assert out == [THINK, ord("a"), END_THINK, NL2]


def test_a_complete_grammar_stops_even_under_ignore_eos():
    seen = []

    def accept(rid: str, token: int) -> bool:
        seen.append(token)
        return token == ord("}")

    s, req = make(SamplingParams(max_tokens=20, ignore_eos=True), grammar=accept)
    released, finish = run(s, req, [[ord("{")], [ord("}")], [ord("x")]])
    assert finish == Finish(STOP) and seen == ids("{}") and "".join(released) == "{}"


def test_a_stop_that_never_comes_streams_everything():
    s, req = make(SamplingParams(max_tokens=5, stop=["zzz"]))
    released, finish = run(s, req, [[t] for t in ids("hello")])
    assert finish == Finish(LENGTH) and "".join(released) == "hello"
    assert released[:3] == ["", "", "h"]  # two characters held while "zzz" could still begin


@pytest.mark.parametrize("split", [1, 2, 3, 7])
def test_the_same_answer_however_the_tokens_arrive(split):
    """One token per step or several (accepted drafts): the same kept tokens and text."""
    text = ids("the cat sat on the mat")
    s, req = make(SamplingParams(max_tokens=50, stop=["on t"]))
    released, finish = run(s, req, [text[i : i + split] for i in range(0, len(text), split)])
    assert finish == Finish(STOP, "on t") and "".join(released) == "the cat sat "
    assert req.output_token_ids == ids("the cat sat on t")


def test_stop_strings_inside_drafts_on_a_model(tiny_llama, monkeypatch):
    """On a real engine with ngram drafts: stop strings cut from every part of
    a repetitive answer (spanning tokens, some landing inside accepted drafts)
    give the tokens, text and reasons of plain decoding, and the engine counts
    exactly the tokens it returned (no draft past a stop is kept)."""
    import json

    from conftest import assert_no_leaks
    from jevons import LLM
    from test_spec_decode import NGRAM, _prompts

    cut_drafts = []
    decide = Stopping.decide

    def counting(self, req, sampled):
        v = decide(self, req, sampled)
        if len(v.tokens) < len(sampled):
            cut_drafts.append(len(sampled) - len(v.tokens))
        return v

    monkeypatch.setattr(Stopping, "decide", counting)
    prompt = _prompts(json.loads((tiny_llama / "config.json").read_text())["vocab_size"])[4]
    plain = LLM(str(tiny_llama), dtype="float32", progress=False)
    spec = LLM(str(tiny_llama), dtype="float32", progress=False, speculative_config=NGRAM)
    base = plain.generate(prompt, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True),
                          use_tqdm=False)[0].outputs[0]
    text = base.text
    stops = [text[a : a + 3] for a in range(len(text) - 2) if text.find(text[a : a + 3]) == a and text[a : a + 3].strip()]
    assert len(stops) >= 8
    for i, stop in enumerate(stops):
        include = i % 2 == 1
        p = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, stop=[stop], include_stop_str_in_output=include)
        want = plain.generate(prompt, p, use_tqdm=False)[0].outputs[0]
        before = spec.engine.generation_tokens_total
        got = spec.generate(prompt, p, use_tqdm=False)[0].outputs[0]
        for attr in ("token_ids", "text", "finish_reason", "stop_reason"):
            assert getattr(got, attr) == getattr(want, attr), (stop, include, attr)
        assert spec.engine.generation_tokens_total - before == len(got.token_ids), stop
        assert want.text == text[: text.find(stop) + len(stop) * include]
    assert cut_drafts  # some stop did land inside accepted drafts
    assert_no_leaks(spec)
