"""--deterministic: a request's tokens and logprobs are bitwise the same
whatever else is in the batch, how its prompt was chunked, whether it was
preempted, and whether its prefix came from the cache."""
import json

import pytest
import torch

from conftest import assert_no_leaks
from jevons import LLM, SamplingParams
from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.models.layers.batch_invariant import RowTiled, make_batch_invariant

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=3)
SEEDED = SamplingParams(temperature=1.0, seed=5, max_tokens=16, ignore_eos=True, logprobs=3)


@pytest.fixture(scope="module")
def det_prompts(tiny_llama):
    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(1)
    ps = [{"prompt_token_ids": torch.randint(3, vocab, (n,), generator=g).tolist()} for n in (50, 7, 33, 64, 18)]
    ps.append({"prompt_token_ids": ps[0]["prompt_token_ids"][:48] + [5, 6, 7]})  # a prefix-cache hit
    return ps


def outputs(llm, ps, params):
    outs = llm.generate(ps, params, use_tqdm=False)
    assert_no_leaks(llm)
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]


@pytest.mark.parametrize("dtype,quant", [("float32", "none"), ("bfloat16", "none"), ("float32", "int8"),
                                         ("bfloat16", "int4")])
def test_bitwise_identical_alone_batched_chunked_preempted_cached(tiny_llama, det_prompts, dtype, quant):
    def llm(**kw):
        return LLM(str(tiny_llama), dtype=dtype, quantization=quant, deterministic=True, progress=False, **kw)

    one = llm()
    for params in (GREEDY, SEEDED):
        alone = [outputs(one, [p], params)[0] for p in det_prompts]
        again = [outputs(one, [p], params)[0] for p in det_prompts]  # every prompt a cache hit now
        assert again == alone
        assert outputs(one, det_prompts, params) == alone
        assert outputs(llm(max_num_batched_tokens=16), det_prompts, params) == alone
        preempting = llm(num_kv_blocks=14, block_size=8)
        assert outputs(preempting, det_prompts, params) == alone
        assert preempting.engine.scheduler.num_preemptions > 0


def test_row_tiled_pads_to_fixed_tiles_and_keeps_values():
    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 8)
    calls = []
    tiled = RowTiled(lin, tile=4)
    tiled.inner.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.randn(2, 5, 24)
    y = tiled(x)
    assert y.shape == (2, 5, 8) and calls == [4, 4, 4]  # 10 rows -> three full tiles
    torch.testing.assert_close(y, lin(x))


def test_make_batch_invariant_wraps_dense_linears_and_the_head(tiny_llama):
    llm = LLM(str(tiny_llama), dtype="float32", quantization="none", progress=False)
    model = llm.engine.runner.model
    n = make_batch_invariant(model, torch.float32)
    head = getattr(model, "fast_head", None) or model.lm_head  # the tiny model's head is untied
    assert n > 0 and isinstance(head, RowTiled)
    assert isinstance(model.layers[0].self_attn.qkv_proj, RowTiled)
    assert make_batch_invariant(model, torch.float32) == 0  # idempotent: wrapped layers stay as they are


def test_build_rows_makes_every_token_a_decode_row():
    tables = torch.tensor([[3, 4], [7, 0]])
    meta = AttentionMetadata.build_rows([3, 1], [5, 2], tables, block_size=4)
    assert not meta.prefills and len(meta.decode_seqs) == 4
    assert meta.seq_lens.tolist() == [6, 7, 8, 3]  # each prompt row sees the cache up to itself
    assert meta.block_tables.tolist() == [[3, 4], [3, 4], [3, 4], [7, 0]]
    plain = AttentionMetadata.build([3, 1], [5, 2], tables, block_size=4)
    assert torch.equal(meta.slot_mapping, plain.slot_mapping)  # the same cache slots are written


def test_deepseek_runs_deterministic(tmp_path):
    """The row-tiled head (no .weight) serves DeepSeek's compute_logits too;
    the same request twice, the second from the prefix cache, gives the same
    tokens. (Only tokens: MLA and the MoE are not yet row-invariant, so the
    cache hit's logprobs move in the last bits; docs/benchmarks.md.)"""
    from test_deepseek_tiny import build_deepseek

    path = build_deepseek(tmp_path, "v3")
    llm = LLM(str(path), dtype="float32", deterministic=True, progress=False)
    prompt = {"prompt_token_ids": list(range(3, 40))}
    first = outputs(llm, [prompt], GREEDY)
    assert len(first[0][0]) == GREEDY.max_tokens
    assert outputs(llm, [prompt], GREEDY)[0][0] == first[0][0]
