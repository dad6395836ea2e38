"""Tiny random Llama / Qwen2 / Mistral models against transformers: logits on
prefill and greedy tokens at batch 1 and 8 with mixed prompt lengths."""
import pytest
import torch

from conftest import assert_no_leaks
from jevons import LLM, SamplingParams


def hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0,
                             min_new_tokens=n)
    return out[0, len(prompt):].tolist()


def prompts(vocab, lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lens]


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral", "llama-tied-rope"])
def model_dir(request, tmp_path_factory):
    from tiny_models import build_model

    kw = {}
    family = request.param
    if family == "llama-tied-rope":
        family = "llama"
        kw = dict(tie_word_embeddings=True, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    return build_model(tmp_path_factory.mktemp(request.param), family, **kw)


def test_prefill_logits_match(model_dir):
    hf = hf_model(model_dir)
    llm = LLM(str(model_dir), dtype="float32", progress=False)
    prompt = prompts(hf.config.vocab_size, [37])[0]
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0, -1]
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=1, logprobs=5))
    lp = out[0].outputs[0].logprobs[0]
    ref_lp = ref.log_softmax(-1)
    for tok, val in lp.items():
        assert abs(val - ref_lp[tok].item()) < 1e-4
    assert out[0].outputs[0].token_ids[0] == int(ref.argmax())


@pytest.mark.parametrize("lens", [[21], [5, 40, 17, 3, 64, 9, 33, 12]])
def test_greedy_tokens_match(model_dir, lens):
    hf = hf_model(model_dir)
    llm = LLM(str(model_dir), dtype="float32", progress=False, max_num_batched_tokens=64)
    ps = prompts(hf.config.vocab_size, lens, seed=len(lens))
    outs = llm.generate([{"prompt_token_ids": p} for p in ps],
                        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False)
    for p, o in zip(ps, outs):
        assert o.outputs[0].token_ids == hf_greedy(hf, p, 12)
    assert_no_leaks(llm)
