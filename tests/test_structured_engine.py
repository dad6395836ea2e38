"""Grammar-constrained decoding in the engine, on a tiny random model: the
grammar alone makes the output valid, whatever the weights. Covers n > 1,
seeds, logprobs, min_tokens, ignore_eos, preemption, aborts and the sampler's
mask on its own."""
from __future__ import annotations

import json
import re

import jsonschema_rs  # schemathesis brings it (test extra)
import pytest
import torch

from conftest import assert_no_leaks
from jevons.llm import LLM
from jevons.errors import InvalidRequestError
from jevons.runner.sampler import Sampler, SamplingBatch, unpack_bitmask
from jevons.sampling_params import SamplingParams, StructuredOutputsParams

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "ok": {"type": "boolean"},
        "size": {"type": "string", "enum": ["S", "M", "L"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
    },
    "required": ["name", "ok", "size", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(str(tiny_llama), dtype="float32", progress=False)


def _params(**kw) -> SamplingParams:
    kw.setdefault("max_tokens", 200)
    kw.setdefault("structured_outputs", StructuredOutputsParams(json=SCHEMA))
    return SamplingParams(**kw)


def test_json_schema_output_validates_for_every_seed_and_n(llm):
    outs = llm.generate(["Hello", "The fox"], _params(n=3, seed=7, temperature=1.0, logprobs=2))
    for out in outs:
        assert len(out.outputs) == 3
        for c in out.outputs:
            assert c.finish_reason == "stop", c.text
            jsonschema_rs.validate(SCHEMA, json.loads(c.text))
            assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
    # Seeded: the same tokens again (the grammar adds no randomness).
    again = llm.generate(["Hello"], _params(n=3, seed=7, temperature=1.0))
    assert [c.token_ids for c in again[0].outputs] == [c.token_ids for c in outs[0].outputs]
    assert_no_leaks(llm)


def test_regex_choice_grammar_and_min_tokens(llm):
    regex = llm.generate(["a"], _params(structured_outputs=StructuredOutputsParams(regex=r"[a-c]{2,4}-[0-9]{2}"),
                                        temperature=1.0, seed=1))[0].outputs[0]
    assert re.fullmatch(r"[a-c]{2,4}-[0-9]{2}", regex.text), regex.text
    choice = llm.generate(["a"], _params(structured_outputs=StructuredOutputsParams(choice=["yes", "no"]),
                                         temperature=0))[0].outputs[0]
    assert choice.text in ("yes", "no") and choice.finish_reason == "stop"
    gram = llm.generate(["a"], _params(structured_outputs=StructuredOutputsParams(grammar='root ::= "x" ("y" | "z")'),
                                       temperature=1.0, seed=3))[0].outputs[0]
    assert gram.text in ("xy", "xz")
    # min_tokens bans EOS longer than the grammar lasts: the grammar wins and the output stays valid.
    short = llm.generate(["a"], _params(structured_outputs=StructuredOutputsParams(choice=["ok"]), min_tokens=5,
                                        temperature=1.0, seed=2))[0].outputs[0]
    assert short.text == "ok" and short.finish_reason == "stop"
    # ignore_eos: the engine ends the sequence when its grammar is complete.
    free = llm.generate(["a"], _params(structured_outputs=StructuredOutputsParams(choice=["ok"]), ignore_eos=True,
                                       temperature=0))[0].outputs[0]
    assert free.text == "ok" and free.finish_reason == "stop"
    assert_no_leaks(llm)


def test_bad_grammar_is_an_invalid_request(llm):
    with pytest.raises(InvalidRequestError) as e:
        llm.engine.add_request("bad", [1, 2], _params(structured_outputs=StructuredOutputsParams(regex="(unclosed")))
    assert e.value.param == "structured_outputs"
    with pytest.raises(InvalidRequestError):
        llm.engine.add_request("bad2", [1, 2], _params(
            structured_outputs=StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": 5}}})))
    with pytest.raises(ValueError):
        StructuredOutputsParams(json={}, regex="a")
    assert not llm.engine.has_work() and len(llm.engine.structured) == 0


def test_abort_frees_matchers(llm):
    core = llm.engine
    core.add_request("r", [5, 6, 7], _params(n=2, seed=1))
    core.step()
    assert len(core.structured) == 2
    core.abort("r")
    assert len(core.structured) == 0
    assert_no_leaks(llm)


def test_preemption_keeps_the_grammar(tiny_llama):
    # A pool so small that requests preempt each other; every output still validates.
    small = LLM(str(tiny_llama), dtype="float32", progress=False, num_kv_blocks=12, block_size=4, max_num_seqs=4)
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"enum": [1, 2, 3]}},
              "required": ["a", "b"], "additionalProperties": False}
    outs = small.generate(["Hello there", "The quick fox", "Numbers", "Paged"],
                          _params(seed=11, temperature=1.0, max_tokens=30,
                                  structured_outputs=StructuredOutputsParams(json=schema)))
    assert small.engine.scheduler.num_preemptions > 0
    for out in outs:
        for c in out.outputs:
            assert c.finish_reason == "stop", c.text
            jsonschema_rs.validate(schema, json.loads(c.text))
    assert len(small.engine.structured) == 0
    assert_no_leaks(small)


def test_sampler_applies_the_mask_only_to_its_row():
    vocab = 70
    words = torch.zeros(3, dtype=torch.int32)
    words[2] = 1 << 3  # token 67 only
    assert unpack_bitmask(words[None], vocab)[0].nonzero().flatten().tolist() == [67]
    logits = torch.randn(2, vocab)
    logits[1, 5] = 50.0
    batch = SamplingBatch([SamplingParams(temperature=0), SamplingParams(temperature=0)], [None, None], [], [],
                          [[67], []], grammar_masks=[words, None])
    out = Sampler()(logits, batch)
    assert out.tokens.tolist() == [67, 5]  # the ban is lifted where the grammar allows nothing else


class _ByteTokenizer:
    vocab_size = 257
    eos_token_ids = frozenset({256})
    special_token_ids = frozenset({256})

    def token_bytes(self, i: int) -> bytes:
        return bytes([i]) if i < 256 else b""


def test_constraint_starts_after_the_reasoning_and_rolls_back():
    from jevons.structured import StructuredOutputManager

    think_end = 200
    m = StructuredOutputManager(_ByteTokenizer(), 257, think_end_id=think_end)
    m.add("r", StructuredOutputsParams(choice=["ok"], after_reasoning=True))
    assert m.masks(["r"]) == {}  # thinking: free
    assert m.accept("r", ord("x")) is False and m.masks(["r"]) == {}
    m.accept("r", think_end)  # </think>: the answer is constrained from here
    allowed = unpack_bitmask(m.masks(["r"])["r"][None], 257)[0].nonzero().flatten().tolist()
    assert allowed == [ord("o")]
    m.accept("r", ord("o"))
    m.rollback("r", 1)  # a token taken back (a rejected draft): the matcher is where it was
    assert unpack_bitmask(m.masks(["r"])["r"][None], 257)[0].nonzero().flatten().tolist() == [ord("o")]
    assert m.accept("r", ord("o")) is False and m.accept("r", ord("k")) is False
    assert m.accept("r", 256) is True  # EOS completes it
    m.forget("r")
    assert len(m) == 0


def test_bench_latency_structured_workload(llm):
    from jevons.bench.latency import run_latency

    pool = list(range(3, 300))
    res = run_latency(llm, pool, prefill_len=8, batch_size=2, decode_prompt_len=4, decode_len=6, num_iters=1,
                      progress=False, structured=True)
    assert all(x > 0 for x in res.decode_b1_tok_s + res.decode_bB_tok_s)
    assert len(llm.engine.structured) == 0
    assert_no_leaks(llm)
