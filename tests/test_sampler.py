"""The vectorized sampler against per-row plain-torch references."""
import torch

from jevons.runner.sampler import Sampler, SamplingBatch, apply_penalties, apply_top_k_top_p_min_p
from jevons.sampling_params import SamplingParams


def batch(params, out_ids=None, prompt_ids=None, gens=None):
    n = len(params)
    return SamplingBatch(params, gens or [None] * n, prompt_ids or [[]] * n, out_ids or [[]] * n, [[]] * n)


def test_greedy_is_argmax():
    logits = torch.randn(5, 50)
    out = Sampler()(logits.clone(), batch([SamplingParams(temperature=0)] * 5))
    assert out.tokens.tolist() == logits.argmax(-1).tolist()


def test_top_k_top_p_min_p_reference():
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    params = [SamplingParams(top_k=5), SamplingParams(top_p=0.5), SamplingParams(min_p=0.2), SamplingParams()]
    got = apply_top_k_top_p_min_p(logits.clone(), params)
    for i, p in enumerate(params):
        row = logits[i]
        keep = torch.ones(30, dtype=torch.bool)
        if p.min_p:
            pr = row.softmax(-1)
            keep &= pr >= p.min_p * pr.max()
        if p.top_k:
            keep &= row >= row.topk(p.top_k).values[-1]
        if p.top_p < 1:
            pr = row.softmax(-1)
            order = pr.argsort(descending=True)
            cum = 0.0
            allowed = set()
            for t in order.tolist():
                if cum >= p.top_p:
                    break
                allowed.add(t)
                cum += pr[t].item()
            keep &= torch.tensor([t in allowed for t in range(30)])
        assert torch.equal(torch.isfinite(got[i]), keep), i


def test_penalties_reference():
    logits = torch.tensor([[1.0, -1.0, 2.0, 0.5]])
    p = SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    got = apply_penalties(logits.clone(), batch([p], out_ids=[[2, 2]], prompt_ids=[[1]]))
    # token 1: in prompt only -> repetition: -1 * 2; token 2: output twice -> 2/2 - 0.25*2 - 0.5
    assert torch.allclose(got, torch.tensor([[1.0, -2.0, 1.0 - 0.5 - 0.5, 0.5]]))


def test_seeded_rows_independent_of_batch():
    torch.manual_seed(1)
    logits = torch.randn(3, 100)
    p = SamplingParams(temperature=1.0, seed=7)

    def draw(rows, others):
        g = torch.Generator().manual_seed(7)
        gens = [g] + [None] * others
        ps = [p] + [SamplingParams(temperature=1.0)] * others
        return [Sampler()(torch.cat([logits[:1], logits[1 : 1 + others]]).clone(), batch(ps, gens=gens)).tokens[0].item()
                for _ in range(rows)]

    assert draw(5, 0) == draw(5, 2)


def test_sampling_follows_distribution():
    torch.manual_seed(0)
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().repeat(4000, 1)
    toks = Sampler()(logits, batch([SamplingParams(temperature=1.0)] * 4000)).tokens
    freq = torch.bincount(toks, minlength=3).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03)


def test_logprobs_and_ranks():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    out = Sampler()(logits.clone(), batch([SamplingParams(temperature=0, logprobs=2)]))
    ref = logits.log_softmax(-1)
    assert out.tokens.item() == 1 and out.ranks.item() == 1
    assert torch.allclose(out.logprobs, ref[:, 1])
    assert out.top_ids.tolist() == [[1, 2]]
