"""Tiny random DeepSeek-V4 models against transformers' DeepseekV4ForCausalLM:
logits on paged prefill (mixed and chunked) and step-by-step decode, with a
sliding window shorter than the prompts, every layer type, CSA top-k below
the compressed entries, hc_mult 1 and 2, the compress rope with and without
YaRN; greedy tokens through the public LLM API at batch 1 and 8."""
from dataclasses import replace

import pytest
import torch

from deepseek_v4_tiny import C, H, S, build_deepseek_v4
from test_deepseek_parity import assert_greedy_matches, assert_paged_logits_match, rand_seqs, run_paged
from test_deepseek_tiny import hf_model, load_jevons

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1}

SHAPES = {
    # S, C, H, C; window 5; CSA every 2 tokens (top-3), HCA every 4; hc_mult 2; two hash layers
    "base": {},
    # one stream, HCA first, YaRN on the compress rope, one hash layer
    "hc1-yarn": dict(num_hidden_layers=3, layer_types=[H, C, S], mlp_layer_types=["hash_moe", "moe", "moe"],
                     hc_mult=1, rope_parameters=YARN, compress_rates={C: 4, H: 8}, sliding_window=7),
    # four streams; the indexer keeps every entry (top-k above them all), a wide window
    "hc4-dense-index": dict(num_hidden_layers=2, layer_types=[C, H], mlp_layer_types=["moe", "moe"], hc_mult=4,
                            index_topk=64, sliding_window=16),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shape(request, tmp_path_factory):
    path = build_deepseek_v4(tmp_path_factory.mktemp(request.param), **SHAPES[request.param])
    return path, hf_model(path)


def test_paged_prefill_and_decode_logits_match(shape):
    assert_paged_logits_match(*shape)


def test_compressed_entries_and_selection_are_live(shape):
    """Dropping the compressed entries' selection (top-k past them all)
    changes the output exactly when the top-k was below the entries: the
    parity above exercised the indexer."""
    path, hf = shape
    model = load_jevons(path)
    prompt_lens, steps = [9, 1, 13, 6], 10
    seqs = rand_seqs(hf.config.vocab_size, [n + steps + 2 for n in prompt_lens], seed=1)
    sparse = run_paged(model, seqs, prompt_lens, steps)
    for layer in model.layers:
        layer.attn.c = replace(layer.attn.c, index_topk=10**6)
    dense = run_paged(model, seqs, prompt_lens, steps)
    same = all(torch.allclose(sparse[s], dense[s], rtol=1e-5, atol=1e-5) for s in sparse)
    rate = hf.config.compress_rates[C]
    assert same == (hf.config.index_topk >= max(len(s) for s in seqs) // rate)


def test_cache_layout_per_layer_type(shape):
    """The engine's blocks hold only compressed entries (CSA: and indexer
    keys), one per m tokens; the window pool each token's window entry and
    HCA's compressor inputs, its short lane CSA's (kept for 2m - 1 tokens)."""
    path, hf = shape
    c = hf.config
    layout = load_jevons(path).kv_cache_layout(16)
    d, i = c.head_dim, c.index_head_dim
    m, m2 = c.compress_rates[C], c.compress_rates[H]
    main = {S: ((0,), (0,)), C: ((d // m,), (i // m,)), H: ((d // m2,), (0,))}
    window = {S: ((d,), (0,)), C: ((d,), (0,)), H: ((d,), (2 * d,))}
    short = {S: ((0,), (0,)), C: ((0,), (4 * d + 4 * i,)), H: ((0,), (0,))}
    assert layout.main == [main[t] for t in c.layer_types]
    assert layout.window == [window[t] for t in c.layer_types]
    assert layout.retain == max(c.sliding_window - 1, m2 - 1 if H in c.layer_types else 0)
    assert layout.short == ([short[t] for t in c.layer_types] if C in c.layer_types else [])
    assert layout.short_retain == (2 * m - 1 if C in c.layer_types else 0)


@pytest.mark.parametrize("lens", [[21], [5, 40, 17, 3, 64, 9, 33, 12]])
def test_greedy_tokens_match(shape, lens):
    assert_greedy_matches(*shape, lens, max_tokens=24)


def test_row_chunks_do_not_change_the_result(shape, monkeypatch):
    """Long prompts score and attend ATTEND_ROWS queries at a time; tiny
    chunks give the same logits as one piece."""
    from jevons.kernels.torch_ref import v4_attention

    path, hf = shape
    model = load_jevons(path)
    prompt_lens, steps = [9, 1, 13, 6], 3
    seqs = rand_seqs(hf.config.vocab_size, [n + steps + 2 for n in prompt_lens], seed=4)
    monkeypatch.setattr(v4_attention, "ATTEND_ROWS", 10**6)
    whole = run_paged(model, seqs, prompt_lens, steps)
    monkeypatch.setattr(v4_attention, "ATTEND_ROWS", 3)
    chunked = run_paged(model, seqs, prompt_lens, steps)
    for s in whole:
        torch.testing.assert_close(chunked[s], whole[s], rtol=1e-5, atol=1e-5)
