"""Greedy output does not depend on how the work was scheduled: alone, batched,
chunked, preempted, with or without the prefix cache, with n > 1 -- one
harness, run on Llama, on DeepSeek (MLA + MoE), on DeepSeek-V3.2 (sparse MLA)
and on DeepSeek-V4 (window + compressed attention)."""
import pytest
import torch

from conftest import assert_no_leaks
from jevons import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


def prompts(vocab, lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"prompt_token_ids": torch.randint(3, vocab, (n,), generator=g).tolist()} for n in lens]


@pytest.fixture(scope="module")
def batch_prompts(tiny_llama):
    import json

    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    ps = prompts(vocab, [50, 7, 33, 64, 18, 90])
    # Two prompts sharing a 48-token prefix exercise prefix-cache hits.
    ps.append({"prompt_token_ids": ps[0]["prompt_token_ids"][:48] + [5, 6, 7]})
    return ps


def run(model, ps, **kw):
    llm = LLM(str(model), dtype="float32", progress=False, **kw)
    outs = llm.generate(ps, GREEDY, use_tqdm=False)
    assert_no_leaks(llm)
    return [o.outputs[0].token_ids for o in outs], llm


@pytest.fixture(scope="module", params=["llama", "deepseek-v3", "deepseek-v3.2", "deepseek-v4"])
def case(request, tiny_llama, tmp_path_factory):
    """One harness for every architecture: the model and its prompts (a GQA
    Llama, DeepSeek-V3's MLA with a latent-only cache and MoE layers, and
    DeepSeek-V3.2's sparse MLA, whose cache pairs the latent with indexer keys
    and whose top-k of 8 is far below these prompts, and DeepSeek-V4's window +
    compressed attention with mHC and hash-routed MoE)."""
    import json

    from deepseek_v32_tiny import build_deepseek_v32
    from deepseek_v4_tiny import build_deepseek_v4
    from test_deepseek_tiny import build_deepseek

    if request.param == "llama":
        model = tiny_llama
    elif request.param == "deepseek-v3":
        model = build_deepseek(tmp_path_factory.mktemp("ds-engine"), "v3")
    elif request.param == "deepseek-v3.2":
        model = build_deepseek_v32(tmp_path_factory.mktemp("ds32-engine"))
    else:
        model = build_deepseek_v4(tmp_path_factory.mktemp("ds4-engine"))
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    ps = prompts(vocab, [50, 7, 33, 64, 18, 90])
    # Two prompts sharing a 48-token prefix exercise prefix-cache hits.
    ps.append({"prompt_token_ids": ps[0]["prompt_token_ids"][:48] + [5, 6, 7]})
    return model, ps


def test_alone_batched_chunked_preempted_identical(case):
    model, batch_prompts = case
    alone = [run(model, [p])[0][0] for p in batch_prompts]
    batched, _ = run(model, batch_prompts)
    assert batched == alone
    chunked, _ = run(model, batch_prompts, max_num_batched_tokens=16)
    assert chunked == alone
    # 14 blocks of 8 tokens cannot hold these 7 sequences at once.
    preempted, llm = run(model, batch_prompts, num_kv_blocks=14, block_size=8)
    assert preempted == alone
    assert llm.engine.scheduler.num_preemptions > 0
    nocache, _ = run(model, batch_prompts, enable_prefix_caching=False, max_num_batched_tokens=40)
    assert nocache == alone


def test_prefix_cache_hits_and_same_output(case):
    model, batch_prompts = case
    llm = LLM(str(model), dtype="float32", progress=False)
    first = llm.generate(batch_prompts[0], GREEDY, use_tqdm=False)[0]
    again = llm.generate(batch_prompts[0], GREEDY, use_tqdm=False)[0]
    assert again.outputs[0].token_ids == first.outputs[0].token_ids
    assert again.num_cached_tokens == 48  # 3 full blocks of 16, last token recomputed
    shared = llm.generate(batch_prompts[-1], GREEDY, use_tqdm=False)[0]
    assert shared.num_cached_tokens == 48
    assert shared.outputs[0].token_ids == run(model, [batch_prompts[-1]], enable_prefix_caching=False)[0][0]
    assert_no_leaks(llm)


def test_n_greater_than_one_shares_prompt(tiny_llama, batch_prompts):
    llm = LLM(str(tiny_llama), dtype="float32", progress=False)
    p = SamplingParams(n=3, temperature=0.8, seed=11, max_tokens=10, ignore_eos=True)
    out = llm.generate(batch_prompts[3], p, use_tqdm=False)[0]
    assert len(out.outputs) == 3 and all(len(o.token_ids) == 10 for o in out.outputs)
    assert llm.engine.kv.prefix_hits >= 2 * 48  # siblings attached the leader's prompt blocks
    again = llm.generate(batch_prompts[3], p, use_tqdm=False)[0]
    assert [o.token_ids for o in again.outputs] == [o.token_ids for o in out.outputs]
    assert_no_leaks(llm)


def test_seed_reproducible_regardless_of_batch(tiny_llama, batch_prompts):
    llm = LLM(str(tiny_llama), dtype="float32", progress=False)
    p = SamplingParams(temperature=1.0, seed=123, max_tokens=15, ignore_eos=True)
    alone = llm.generate(batch_prompts[1], p, use_tqdm=False)[0].outputs[0].token_ids
    mixed = llm.generate([batch_prompts[0], batch_prompts[1], batch_prompts[2]],
                         [SamplingParams(temperature=1.0, max_tokens=15), p, GREEDY], use_tqdm=False)
    assert mixed[1].outputs[0].token_ids == alone
    assert_no_leaks(llm)


def test_request_that_can_never_fit_is_rejected(tiny_llama, batch_prompts):
    llm = LLM(str(tiny_llama), dtype="float32", progress=False, num_kv_blocks=4, block_size=8)
    with pytest.raises(ValueError, match="KV blocks"):
        llm.generate(batch_prompts[0], SamplingParams(max_tokens=100), use_tqdm=False)
    with pytest.raises(ValueError, match="context length"):
        llm.generate({"prompt_token_ids": [5] * 600}, use_tqdm=False)
    with pytest.raises(ValueError, match="vocabulary"):
        llm.generate({"prompt_token_ids": [10**6]}, use_tqdm=False)
    assert_no_leaks(llm)


def test_stop_tokens_strings_max_tokens_min_tokens(tiny_llama, batch_prompts):
    llm = LLM(str(tiny_llama), dtype="float32", progress=False)
    base = llm.generate(batch_prompts[2], GREEDY, use_tqdm=False)[0].outputs[0]
    stop_tok = base.token_ids[5]
    first = base.token_ids.index(stop_tok)
    o = llm.generate(batch_prompts[2], SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[stop_tok]),
                     use_tqdm=False)[0].outputs[0]
    assert o.token_ids == base.token_ids[: first + 1] and o.finish_reason == "stop" and o.stop_reason == stop_tok
    # A stop string cut from the middle of the text: never in the output.
    text = base.text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    if stop.strip():
        o = llm.generate(batch_prompts[2], SamplingParams(temperature=0, max_tokens=20, stop=[stop]),
                         use_tqdm=False)[0].outputs[0]
        assert o.text == text[: text.find(stop)] and o.finish_reason == "stop" and o.stop_reason == stop
    o = llm.generate(batch_prompts[2], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)[0].outputs[0]
    assert len(o.token_ids) == 3 and o.finish_reason == "length"
    # min_tokens keeps EOS out until reached.
    eos = min(llm.get_tokenizer().eos_token_ids)
    o = llm.generate(batch_prompts[2], SamplingParams(temperature=0, max_tokens=8, min_tokens=8, stop_token_ids=[stop_tok]),
                     use_tqdm=False)[0].outputs[0]
    assert len(o.token_ids) == 8 and stop_tok not in o.token_ids and eos not in o.token_ids
    assert_no_leaks(llm)
