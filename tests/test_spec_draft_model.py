"""Speculative decoding with a draft model (`"method": "draft_model"`): the
target itself as its own draft has every draft accepted; a different tiny
model as the draft keeps greedy output identical; no leaks."""
import pytest
import torch

from conftest import assert_no_leaks
from jevons import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


def _ps():
    g = torch.Generator().manual_seed(9)
    return [{"prompt_token_ids": torch.randint(3, 300, (n,), generator=g).tolist()} for n in (23, 5, 40)]


def _tokens(llm):
    return [o.outputs[0].token_ids for o in llm.generate(_ps(), GREEDY, use_tqdm=False)]


def test_draft_model(tiny_llama, tiny_qwen2):
    base = _tokens(LLM(str(tiny_llama), dtype="float32", progress=False))
    spec = {"method": "draft_model", "model": str(tiny_llama), "num_speculative_tokens": 3}
    llm = LLM(str(tiny_llama), dtype="float32", progress=False, speculative_config=spec, max_num_batched_tokens=16)
    assert _tokens(llm) == base
    st = llm.engine.stats()
    assert st["spec_decode_num_drafts"] > 0
    assert st["spec_decode_num_accepted_tokens"] == st["spec_decode_num_draft_tokens"]  # its own drafts: all kept
    assert_no_leaks(llm)
    other = {"method": "draft_model", "model": str(tiny_qwen2), "num_speculative_tokens": 2}
    llm = LLM(str(tiny_llama), dtype="float32", progress=False, speculative_config=other,
              num_kv_blocks=10, block_size=8)
    assert _tokens(llm) == base
    assert llm.engine.stats()["spec_decode_num_draft_tokens"] > 0
    assert_no_leaks(llm)
    with pytest.raises(ValueError, match="draft_model"):
        LLM(str(tiny_llama), progress=False, speculative_config={"method": "draft_model"})
