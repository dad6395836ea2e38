"""Tiny random DeepSeek-V3.2 models against transformers' DeepseekV32ForCausalLM:
logits on paged prefill (mixed and chunked) and step-by-step decode with the
index top-k smaller than the context (so the sparse selection decides the
output), both MLA forms against each other, the dense fallback, and greedy
tokens through the public LLM API at batch 1 and 8."""
from dataclasses import replace

import pytest
import torch

from conftest import assert_no_leaks
from deepseek_v32_tiny import build_deepseek_v32
from test_deepseek_parity import assert_greedy_matches, assert_paged_logits_match, rand_seqs, run_paged
from test_deepseek_tiny import hf_model, load_jevons

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128, "beta_fast": 32,
        "beta_slow": 1, "rope_theta": 10000.0, "mscale": 1.0, "mscale_all_dim": 0.8}

# Each differs from V32_BASE (top-k 8 of 16 index heads x 32 dims, half of
# them rotated; q_lora; n_group 2; one dense layer) in the listed ways.
SHAPES = {
    "base": {},
    # top-k 5, every index dim rotated, YaRN, biases, no dense layer, 2 shared experts
    "yarn": dict(index_topk=5, index_head_dim=16, index_n_heads=12, rope_parameters=YARN, attention_bias=True,
                 n_group=1, topk_group=1, first_k_dense_replace=0, n_shared_experts=2),
    # top-k above every context in the logit test: the dense fallback throughout
    "dense": dict(index_topk=64, index_n_heads=4),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shape(request, tmp_path_factory):
    path = build_deepseek_v32(tmp_path_factory.mktemp(request.param), **SHAPES[request.param])
    return path, hf_model(path)


def test_paged_prefill_and_decode_logits_match(shape):
    assert_paged_logits_match(*shape)


def test_absorbed_and_expanded_forms_agree(shape):
    """Decode expanded + prefill gathered-absorbed against the defaults
    (decode gathered-absorbed + prefill masked-expanded)."""
    path, hf = shape
    model = load_jevons(path)
    prompt_lens, steps = [7, 2, 11, 5], 4
    seqs = rand_seqs(hf.config.vocab_size, [n + steps + 2 for n in prompt_lens], seed=2)
    default = run_paged(model, seqs, prompt_lens, steps)
    for layer in model.layers:
        layer.self_attn.decode_form, layer.self_attn.prefill_form = "expanded", "absorbed"
    swapped = run_paged(model, seqs, prompt_lens, steps)
    for s in default:
        torch.testing.assert_close(swapped[s], default[s], rtol=1e-5, atol=1e-5)


def test_selection_is_live(shape):
    """Widening the top-k past the context changes the output exactly when the
    context is longer than the top-k: the parity above did exercise sparsity
    (and, for the 'dense' shape, the fallback)."""
    path, hf = shape
    model = load_jevons(path)
    prompt_lens, steps = [9, 1, 13, 6], 10
    seqs = rand_seqs(hf.config.vocab_size, [n + steps + 2 for n in prompt_lens], seed=1)
    sparse = run_paged(model, seqs, prompt_lens, steps)
    for layer in model.layers:
        layer.self_attn.indexer.c = replace(layer.self_attn.indexer.c, topk=10**6)
    dense = run_paged(model, seqs, prompt_lens, steps)
    same = all(torch.allclose(sparse[s], dense[s], rtol=1e-5, atol=1e-5) for s in sparse)
    assert same == (hf.config.index_topk >= max(len(s) for s in seqs))


def test_cache_pair_holds_latent_and_index_keys(shape):
    """The layer's K tensor is the MLA latent + rope key, its V tensor the
    indexer key; a block's payload for the cache tiers carries both."""
    from jevons import LLM
    from jevons.engine.cache_tiers.kv_transfer import BlockTransfer

    path, hf = shape
    c = hf.config
    llm = LLM(str(path), dtype="float32", progress=False, num_kv_blocks=8, block_size=4)
    caches = llm.engine.runner.kv_caches
    assert len(caches) == c.num_hidden_layers
    for k, v in caches:
        assert k.shape == (8, 4, c.kv_lora_rank + c.qk_rope_head_dim) and v.shape == (8, 4, c.index_head_dim)
    per_token = c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim + c.index_head_dim) * 4
    assert BlockTransfer(caches).payload_bytes == 4 * per_token
    assert_no_leaks(llm)


@pytest.mark.parametrize("lens", [[21], [5, 40, 17, 3, 64, 9, 33, 12]])
def test_greedy_tokens_match(shape, lens):
    assert_greedy_matches(*shape, lens, max_tokens=24)


def test_topk_selection_breaks_ties_by_index():
    """The indexer's top-k (a top-k value plus a tie cumsum) picks exactly
    what a stable descending sort picks, ties included: batch layout cannot
    change which keys a query attends to."""
    from jevons.kernels.torch_ref.moe_routing import stable_topk
    from jevons.kernels.torch_ref.sparse_mla import select_topk

    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        n = int(torch.randint(5, 60, (1,), generator=g))
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        scores = torch.randint(0, 6, (3, 4, n), generator=g).float()  # many ties
        visible = torch.rand(3, 4, n, generator=g) > 0.3
        idx, ok = select_topk(scores, visible, k)
        want = stable_topk(scores.masked_fill(~visible, float("-inf")), k).sort(-1).values
        assert torch.equal(idx, want) and torch.equal(ok, visible.gather(-1, want))


def test_row_and_head_chunks_do_not_change_the_result(shape, monkeypatch):
    """Long prompts score the indexer SCORE_ROWS queries x SCORE_HEADS heads
    at a time; tiny chunks give the same logits as one piece."""
    from jevons.kernels.torch_ref import sparse_mla

    path, hf = shape
    model = load_jevons(path)
    prompt_lens, steps = [9, 1, 13, 6], 3
    seqs = rand_seqs(hf.config.vocab_size, [n + steps + 2 for n in prompt_lens], seed=4)
    whole = run_paged(model, seqs, prompt_lens, steps)
    monkeypatch.setattr(sparse_mla, "SCORE_ROWS", 3)
    monkeypatch.setattr(sparse_mla, "SCORE_HEADS", 5)
    chunked = run_paged(model, seqs, prompt_lens, steps)
    for s in whole:
        torch.testing.assert_close(chunked[s], whole[s], rtol=1e-5, atol=1e-5)
