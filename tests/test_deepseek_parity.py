"""Tiny random DeepSeek-V3 and V2 models against transformers: logits on a
mixed prefill batch, on step-by-step paged decode (with a chunked prefill and
a late joiner in the same steps), both MLA forms against each other, and
greedy tokens through the public LLM API at batch 1 and 8."""
import pytest
import torch

from conftest import assert_no_leaks
from test_deepseek_tiny import PagedDriver, build_deepseek, hf_model, load_jevons

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128, "beta_fast": 32,
        "beta_slow": 1, "rope_theta": 10000.0}

# Each shape differs from the base in the listed ways; together they cover
# q_lora_rank on/off, n_group 1 and >1, first_k_dense_replace 0 and >0,
# 0/1/2 shared experts, norm_topk_prob on/off, both rope layouts and YaRN.
SHAPES = {
    "v3": ("v3", {}),  # q_lora, n_group 2, 1 dense layer, 1 shared, norm_topk_prob
    "v3-lite": ("v3", dict(q_lora_rank=None, n_group=1, topk_group=1, first_k_dense_replace=0,
                           n_shared_experts=0, norm_topk_prob=False)),
    "v3-yarn": ("v3", dict(n_shared_experts=2, n_group=4, topk_group=2, num_experts_per_tok=3, attention_bias=True,
                           rope_interleave=False, rope_parameters=dict(YARN, mscale=1.0, mscale_all_dim=0.8))),
    "v2": ("v2", {}),  # greedy, q_lora, 2 shared
    "v2-lite": ("v2", dict(q_lora_rank=None, first_k_dense_replace=0, n_shared_experts=1,
                           rope_parameters=dict(YARN, mscale=0.707, mscale_all_dim=0.707))),
    "v2-group": ("v2", dict(topk_method="group_limited_greedy", n_group=4, topk_group=2, num_experts_per_tok=3,
                            n_shared_experts=0, first_k_dense_replace=2)),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shape(request, tmp_path_factory):
    version, kw = SHAPES[request.param]
    path = build_deepseek(tmp_path_factory.mktemp(request.param), version, **kw)
    return path, hf_model(path)


def rand_seqs(vocab, lens, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lens]


def close(out, ref):
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@torch.no_grad()
def run_paged(model, seqs, prompt_lens, steps):
    """Seq 0 and 1 prefill at step 0, seq 2 prefills in two chunks (steps 0
    and 1), seq 3 joins at step 1; then everyone decodes `steps` tokens.
    Returns, per sequence, logits for every position fed."""
    drv = PagedDriver(model)
    got = {i: [] for i in range(len(seqs))}
    p = prompt_lens
    half = p[2] // 2
    plan = [
        [(0, seqs[0][: p[0]]), (1, seqs[1][: p[1]]), (2, seqs[2][:half])],
        [(2, seqs[2][half : p[2]]), (0, [seqs[0][p[0]]]), (3, seqs[3][: p[3]]), (1, [seqs[1][p[1]]])],
    ]
    fed = {0: p[0] + 1, 1: p[1] + 1, 2: p[2], 3: p[3]}
    for _ in range(steps):
        plan.append([(s, [seqs[s][fed[s]]]) for s in range(4)])
        for s in range(4):
            fed[s] += 1
    for feeds in plan:
        logits, _ = drv.step(feeds)
        for (s, _), lg in zip(feeds, logits):
            got[s].append(lg)
    return {s: torch.cat(v) for s, v in got.items()}


def assert_paged_logits_match(path, hf, seed: int = 1) -> None:
    """jevons's paged prefill (mixed, chunked, a late joiner) then step-by-step
    decode give transformers' logits, for any DeepSeek generation."""
    model = load_jevons(path)
    prompt_lens, steps = [9, 1, 13, 6], 10
    seqs = rand_seqs(hf.config.vocab_size, [n + steps + 2 for n in prompt_lens], seed=seed)
    got = run_paged(model, seqs, prompt_lens, steps)
    for s, seq in enumerate(seqs):
        with torch.no_grad():
            ref = hf(torch.tensor([seq])).logits[0]
        close(got[s], ref[: got[s].shape[0]])


def assert_greedy_matches(path, hf, lens: list[int], max_tokens: int) -> None:
    """Greedy tokens through the whole engine equal transformers': its own
    generate loop alone, its argmax along jevons's path in a batch."""
    from jevons import LLM, SamplingParams

    llm = LLM(str(path), dtype="float32", progress=False, max_num_batched_tokens=64)
    prompts = rand_seqs(hf.config.vocab_size, lens, seed=len(lens))
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True), use_tqdm=False)
    for p, o in zip(prompts, outs):
        tokens = o.outputs[0].token_ids
        assert len(tokens) == max_tokens
        if len(prompts) == 1:
            assert tokens == hf_greedy(hf, p, max_tokens)  # transformers' own generate loop
        else:
            assert tokens == hf_argmax_path(hf, p, tokens)
    assert_no_leaks(llm)


def test_paged_prefill_and_decode_logits_match(shape):
    assert_paged_logits_match(*shape)


def test_absorbed_and_expanded_forms_agree(shape):
    path, hf = shape
    model = load_jevons(path)
    prompt_lens, steps = [7, 2, 11, 5], 4
    seqs = rand_seqs(hf.config.vocab_size, [n + steps + 2 for n in prompt_lens], seed=2)
    default = run_paged(model, seqs, prompt_lens, steps)  # decode absorbed, prefill expanded
    for layer in model.layers:
        layer.self_attn.decode_form, layer.self_attn.prefill_form = "expanded", "absorbed"
    swapped = run_paged(model, seqs, prompt_lens, steps)
    for s in default:
        torch.testing.assert_close(swapped[s], default[s], rtol=1e-5, atol=1e-5)


def test_routing_bias_is_live(shape):
    """The V3 selection bias is random in these checkpoints and changes the
    output when removed, so the parity above really exercised it."""
    path, hf = shape
    model = load_jevons(path)
    gates = [m for m in model.modules() if getattr(m, "e_score_correction_bias", None) is not None]
    if not gates:
        pytest.skip("V2 routers have no selection bias")
    seq = rand_seqs(hf.config.vocab_size, [24], seed=3)
    before = PagedDriver(model).step([(0, seq[0])])[0][0]
    for g in gates:
        g.e_score_correction_bias.data.zero_()
    after = PagedDriver(model).step([(0, seq[0])])[0][0]
    assert not torch.allclose(before, after, atol=1e-4)


def hf_greedy(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def hf_argmax_path(model, prompt, tokens):
    """transformers' argmax after each prefix prompt + tokens[:i], in one
    forward. If it equals `tokens`, then by induction transformers' greedy
    decoding produces `tokens` too: the same check as generate(), at 1/n the cost."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens[:-1]])).logits[0, len(prompt) - 1 :]
    return logits.argmax(-1).tolist()


@pytest.mark.parametrize("lens", [[21], [5, 40, 17, 3, 64, 9, 33, 12]])
def test_greedy_tokens_match(shape, lens):
    assert_greedy_matches(*shape, lens, max_tokens=32)
