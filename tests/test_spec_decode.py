"""Speculative decoding (issue 16): with ngram drafts on, greedy output is the
output without them, token for token (and bitwise, logprobs included, under
--deterministic), alone, batched, chunked, preempted and with prefix-cache
hits; stops inside a draft emit nothing past the stop; sampled output keeps
the target distribution; no block leaks."""
import json

import pytest
import torch

from conftest import assert_no_leaks
from jevons import LLM, SamplingParams
from jevons.config import SpeculativeConfig

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def _prompts(vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    rand = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (40, 9, 27, 60)]
    # Prompts that repeat themselves, so prompt lookup finds drafts from the start.
    rep = [(r[:7] * 5)[:33] for r in rand[:2]]
    ps = rand + rep
    ps.append(rand[0][:32] + [5, 6, 7])  # shares two 16-token blocks with the first: a prefix-cache hit
    return [{"prompt_token_ids": p} for p in ps]


@pytest.fixture(scope="module")
def prompts(tiny_llama):
    return _prompts(json.loads((tiny_llama / "config.json").read_text())["vocab_size"])


def run(model, ps, params=GREEDY, spec=True, **kw):
    llm = LLM(str(model), dtype="float32", progress=False, speculative_config=NGRAM if spec else None, **kw)
    outs = llm.generate(ps, params, use_tqdm=False)
    assert_no_leaks(llm)
    return outs, llm


def tokens(outs):
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("deterministic", [False, True])
def test_greedy_identical_alone_batched_chunked_preempted(tiny_llama, prompts, deterministic):
    base = tokens(run(tiny_llama, prompts, spec=False, deterministic=deterministic)[0])
    alone = [tokens(run(tiny_llama, [p], deterministic=deterministic)[0])[0] for p in prompts[:3]]
    assert alone == base[:3]
    outs, llm = run(tiny_llama, prompts, deterministic=deterministic)
    assert tokens(outs) == base
    stats = llm.engine.stats()
    assert stats["spec_decode_num_accepted_tokens"] > 0  # the drafts did something
    assert stats["spec_decode_num_draft_tokens"] >= stats["spec_decode_num_accepted_tokens"]
    again = llm.generate(prompts[-1], GREEDY, use_tqdm=False)[0]  # its first 32 tokens from the prefix cache
    assert again.num_cached_tokens == 32 and again.outputs[0].token_ids == base[-1]
    assert_no_leaks(llm)
    chunked = tokens(run(tiny_llama, prompts, max_num_batched_tokens=16, deterministic=deterministic)[0])
    assert chunked == base
    outs, llm = run(tiny_llama, prompts, num_kv_blocks=14, block_size=8, deterministic=deterministic)
    assert tokens(outs) == base
    assert llm.engine.scheduler.num_preemptions > 0


def test_qwen2_greedy_identical(tiny_qwen2):
    ps = _prompts(json.loads((tiny_qwen2 / "config.json").read_text())["vocab_size"])
    base = tokens(run(tiny_qwen2, ps, spec=False)[0])
    outs, llm = run(tiny_qwen2, ps)
    assert tokens(outs) == base
    assert llm.engine.stats()["spec_decode_num_accepted_tokens"] > 0


def test_deterministic_logprobs_bitwise(tiny_llama, prompts):
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, logprobs=3)
    base, _ = run(tiny_llama, prompts, params, spec=False, deterministic=True)
    spec, _ = run(tiny_llama, prompts, params, deterministic=True)
    for a, b in zip(base, spec):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert len(b.outputs[0].logprobs) == len(b.outputs[0].token_ids)  # one entry per accepted token
        for x, y in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert {t: (lp.logprob, lp.rank) for t, lp in x.items()} == {t: (lp.logprob, lp.rank) for t, lp in y.items()}
        assert a.outputs[0].cumulative_logprob == b.outputs[0].cumulative_logprob


def test_stops_inside_a_draft(tiny_llama, prompts):
    """max_tokens, a stop token and a stop string that land inside a step's
    accepted drafts: the same output as without drafts, nothing past the stop."""
    base = tokens(run(tiny_llama, prompts, spec=False)[0])
    for n in (1, 2, 5, 7, 13):
        p = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        assert tokens(run(tiny_llama, prompts, p)[0]) == [b[:n] for b in base]
    # A stop token that is one of the later tokens of a repetitive output.
    seq = base[4]
    stop_tok = seq[10]
    p = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop_token_ids=[stop_tok])
    want, _ = run(tiny_llama, [prompts[4]], p, spec=False)
    got, _ = run(tiny_llama, [prompts[4]], p)
    assert got[0].outputs[0].token_ids == want[0].outputs[0].token_ids == seq[: seq.index(stop_tok) + 1]
    assert got[0].outputs[0].finish_reason == "stop"
    # min_tokens past the stop token's first place: drafting waits until it is met.
    p = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop_token_ids=[stop_tok],
                       min_tokens=seq.index(stop_tok) + 1)
    want, _ = run(tiny_llama, [prompts[4]], p, spec=False)
    got, _ = run(tiny_llama, [prompts[4]], p)
    assert got[0].outputs[0].token_ids == want[0].outputs[0].token_ids
    # A stop string: the text of tokens 8..9 of the output.
    llm = LLM(str(tiny_llama), dtype="float32", progress=False)
    stop = llm.engine.tokenizer.decode(seq[8:10])
    if stop.strip():
        p = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop])
        want, _ = run(tiny_llama, [prompts[4]], p, spec=False)
        got, _ = run(tiny_llama, [prompts[4]], p)
        for attr in ("token_ids", "text", "finish_reason", "stop_reason"):
            assert getattr(got[0].outputs[0], attr) == getattr(want[0].outputs[0], attr)


def test_seeded_sampling_reproducible_and_n(tiny_llama, prompts):
    p = SamplingParams(n=3, temperature=0.8, seed=5, max_tokens=16, ignore_eos=True)
    a, llm = run(tiny_llama, prompts[4:6], p)
    b, _ = run(tiny_llama, prompts[4:6], p)
    assert [[c.token_ids for c in o.outputs] for o in a] == [[c.token_ids for c in o.outputs] for o in b]
    assert all(len(c.token_ids) == 16 for o in a for c in o.outputs)
    # A seeded request's tokens do not depend on what else is in the batch.
    alone, _ = run(tiny_llama, prompts[4:5], p)
    assert [c.token_ids for c in alone[0].outputs] == [c.token_ids for c in a[0].outputs]


def test_abort_mid_draft_frees_blocks(tiny_llama, prompts):
    llm = LLM(str(tiny_llama), dtype="float32", progress=False, speculative_config=NGRAM)
    core = llm.engine
    for i, p in enumerate(prompts[4:6]):
        core.add_request(f"r{i}", p["prompt_token_ids"], SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
    for _ in range(60):  # until the outputs loop and drafts start
        core.step()
        if core.stats()["spec_decode_num_drafts"] > 2:
            break
    assert core.stats()["spec_decode_num_drafts"] > 2
    core.abort("r0")
    core.step()
    core.abort("r1")
    assert_no_leaks(core)


def test_sampled_distribution_unchanged(tiny_llama):
    """Rejection sampling keeps the target distribution: the joint law of the
    first three tokens, with drafts and without, agrees (two-sample
    chi-square, fixed seeds, so the verdict is reproducible)."""
    a, b, c = 40, 41, 42
    prompt = {"prompt_token_ids": [a, b, c] * 6 + [a, b]}
    n = 1500
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=3, ignore_eos=True,
                             logit_bias={a: 6.0, b: 6.0, c: 6.0}) for i in range(n)]
    counts = []
    for spec in (False, True):
        llm = LLM(str(tiny_llama), dtype="float32", progress=False, speculative_config=NGRAM if spec else None)
        outs = llm.generate([prompt] * n, params, use_tqdm=False)
        hist: dict[tuple, int] = {}
        for o in outs:
            key = tuple(t if t in (a, b, c) else -1 for t in o.outputs[0].token_ids)
            hist[key] = hist.get(key, 0) + 1
        counts.append(hist)
        if spec:
            st = llm.engine.stats()
            assert st["spec_decode_num_accepted_tokens"] > n // 10  # drafts were accepted often
    keys = set(counts[0]) | set(counts[1])
    chi2 = sum((counts[0].get(k, 0) - counts[1].get(k, 0)) ** 2 / (counts[0].get(k, 0) + counts[1].get(k, 0))
               for k in keys)
    dof = len(keys) - 1
    # Far in the tail of chi-square(dof) (mean dof, sd sqrt(2 dof)): a wrong
    # rule (e.g. always accepting drafts) lands orders of magnitude above.
    assert chi2 < dof + 5 * (2 * dof) ** 0.5, (chi2, dof, counts)


def test_config_parsing():
    cfg = SpeculativeConfig.parse('{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 5}')
    assert (cfg.num_speculative_tokens, cfg.prompt_lookup_max) == (3, 5)
    for bad, word in (({"method": "eagle"}, "eagle"), ({"num_speculative_tokens": 0}, "num_speculative_tokens"),
                      ({"prompt_lookup_min": 5, "prompt_lookup_max": 2}, "prompt_lookup_min"),
                      ({"bogus": 1}, "bogus"), ("{not json", "JSON"), ("[1]", "object")):
        with pytest.raises(ValueError, match=word):
            SpeculativeConfig.parse(bad)


class _WrongProposer:
    """Always drafts a token the model never picks here (so every draft misses)."""

    def __init__(self, avoid):
        self.avoid = avoid

    def propose(self, token_ids, max_drafts):
        return [self.avoid] * min(3, max_drafts)


def test_speculation_backs_off_when_drafts_miss(tiny_llama, prompts):
    base = tokens(run(tiny_llama, prompts[:1], spec=False)[0])[0]
    llm = LLM(str(tiny_llama), dtype="float32", progress=False)
    llm.engine.scheduler.proposer = _WrongProposer(next(t for t in range(3, 300) if t not in base))
    out = llm.generate(prompts[:1], GREEDY, use_tqdm=False)
    assert out[0].outputs[0].token_ids == base
    st = llm.engine.stats()
    assert st["spec_decode_num_accepted_tokens"] == 0
    # 23 decode steps: drafts at backoffs 0, 1, 2, 4, 8 (5 verifies), not 23.
    assert 3 <= st["spec_decode_num_drafts"] <= 6
    assert_no_leaks(llm)
