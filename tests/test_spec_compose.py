"""Speculative decoding beside the other features that touch each token:
grammar-constrained requests (never drafted for; their output is what it
is without drafts) and tensor parallelism (the drafts' rows travel in the
RunnerInput to every rank; rank 0's verified tokens come back)."""
from conftest import assert_no_leaks
from jevons import LLM, SamplingParams
from jevons.sampling_params import StructuredOutputsParams

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


def _prompts():
    return [{"prompt_token_ids": ([7, 8, 9, 10, 11] * 6)[:n]} for n in (17, 29)] + \
        [{"prompt_token_ids": [40, 41, 42, 43, 40, 41]}]


def test_grammar_requests_beside_drafted_ones(tiny_llama):
    ps = _prompts()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    params = [GREEDY, GREEDY, SamplingParams(temperature=0, max_tokens=40,
                                             structured_outputs=StructuredOutputsParams(json=schema))]
    outs = {}
    for spec in (None, NGRAM):
        llm = LLM(str(tiny_llama), dtype="float32", progress=False, speculative_config=spec)
        outs[spec is None] = [o.outputs[0] for o in llm.generate(ps, params, use_tqdm=False)]
        assert_no_leaks(llm)
    assert [o.token_ids for o in outs[True]] == [o.token_ids for o in outs[False]]
    assert outs[False][2].text.startswith("{")  # it was constrained


def test_tensor_parallel_with_drafts(tiny_llama):
    ps = _prompts()
    base = [o.outputs[0].token_ids for o in
            LLM(str(tiny_llama), dtype="float32", progress=False).generate(ps, GREEDY, use_tqdm=False)]
    llm = LLM(str(tiny_llama), dtype="float32", progress=False, tensor_parallel_size=2, speculative_config=NGRAM)
    try:
        got = [o.outputs[0].token_ids for o in llm.generate(ps, GREEDY, use_tqdm=False)]
        assert got == base
        assert llm.engine.stats()["spec_decode_num_accepted_tokens"] > 0
        assert_no_leaks(llm)
    finally:
        llm.engine.close()
