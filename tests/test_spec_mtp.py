"""Speculative decoding with DeepSeek-V3's multi-token-prediction layer
(`"method": "mtp"`): the drafts are what the MTP layer predicts (checked
against the hand-written reference of test_deepseek_mtp.py, also after a
chunked prefill), and greedy output equals plain decoding alone, batched,
chunked and preempted, with no block left behind."""
import pytest
import torch

from conftest import assert_no_leaks
from jevons import LLM, SamplingParams
from test_deepseek_mtp import mtp_ckpt, reference_mtp_logits  # noqa: F401 (mtp_ckpt is a fixture)

MTP = {"method": "deepseek_mtp", "num_speculative_tokens": 2}
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def _llm(path, spec=True, **kw):
    return LLM(str(path), dtype="float32", progress=False, speculative_config=MTP if spec else None, **kw)


@pytest.mark.parametrize("budget", [2048, 8])
def test_first_draft_is_the_mtp_layers_prediction(mtp_ckpt, budget):
    main_dir, twin_dir, mtp_dir, own = mtp_ckpt
    llm = _llm(mtp_dir, max_num_batched_tokens=budget)
    core = llm.engine
    ids = torch.randint(3, 300, (19,), generator=torch.Generator().manual_seed(4)).tolist()
    core.add_request("a", ids, GREEDY)
    while not core.requests["a"].output_token_ids:
        core.step()
    req = core.requests["a"]
    ref = reference_mtp_logits(main_dir, twin_dir, own, torch.tensor(ids + req.output_token_ids))
    assert len(req.spec_token_ids) == 2
    assert req.spec_token_ids[0] == int(ref[-1].argmax())
    core.abort("a")
    assert_no_leaks(core)


def test_no_mtp_layer_is_an_error(mtp_ckpt):
    main_dir = mtp_ckpt[0]
    with pytest.raises(ValueError, match="multi-token-prediction"):
        _llm(main_dir)


def test_greedy_identical_with_mtp_drafts(mtp_ckpt):
    mtp_dir = mtp_ckpt[2]
    g = torch.Generator().manual_seed(5)
    ps = [{"prompt_token_ids": torch.randint(3, 300, (n,), generator=g).tolist()} for n in (21, 6, 37, 14)]
    base = [o.outputs[0].token_ids for o in _llm(mtp_dir, spec=False).generate(ps, GREEDY, use_tqdm=False)]
    for kw in ({}, {"max_num_batched_tokens": 8}, {"num_kv_blocks": 8, "block_size": 8}):
        llm = _llm(mtp_dir, **kw)
        got = [o.outputs[0].token_ids for o in llm.generate(ps, GREEDY, use_tqdm=False)]
        assert got == base, kw
        assert llm.engine.stats()["spec_decode_num_draft_tokens"] > 0
        assert_no_leaks(llm)
    alone = [o.outputs[0].token_ids for o in _llm(mtp_dir).generate(ps[:1], GREEDY, use_tqdm=False)]
    assert alone == base[:1]
