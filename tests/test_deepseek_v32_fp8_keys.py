"""DeepSeek-V3.2's indexer keys cached in FP8 (kernels/torch_ref/index_keys.py):
e4m3 with a float32 scale per 128 dims, Hadamard-rotated first, as DeepSeek
serves its FP8 checkpoints. The quantization error is held to e4m3's own
bound, scores to the bound that error implies, the selection at V3.2's
dimensions to the unquantized one's, and a tiny FP8-config model to the
engine's identity rules and to its cache size."""
import json

import pytest
import torch

from jevons.kernels.torch_ref import index_keys as ik
from jevons.kernels.torch_ref.sparse_mla import index_scores, read_index_keys, topk_mask, write_index_keys

# e4m3: 3 mantissa bits, so rounding a normal value moves it by at most 2^-4 of
# itself; below 2^-6 (subnormals) the spacing is 2^-9, half of it 2^-10, in
# units of the block's scale.
REL, SUB = 2.0**-4, 2.0**-10


def outlying_keys(n, di, seed=0):
    """LayerNorm-like keys with a few channels 8x larger and a shared offset,
    and some tiny ones (the subnormal range of their block's scale)."""
    g = torch.Generator().manual_seed(seed)
    gain = torch.ones(di)
    gain[torch.randperm(di, generator=g)[:4]] = 8.0
    keys = torch.randn(n, di, generator=g) * gain + 0.2 * torch.randn(di, generator=g)
    keys[:, :3] *= 1e-4
    return keys


@pytest.mark.parametrize("di", [128, 256, 32])
@pytest.mark.parametrize("pow2", [False, True])
def test_round_trip_within_e4m3_rounding(di, pow2):
    fmt = ik.FP8Keys(di, pow2_scales=pow2)
    keys = outlying_keys(500, di)
    entries = ik.quantize(keys, fmt)
    assert entries.dtype == torch.uint8 and entries.shape == (500, di + 4 * max(1, di // 128))
    back = ik.dequantize(entries, fmt)
    scales = entries[:, di:].contiguous().view(torch.float32)  # [N, blocks]
    s = scales.repeat_interleave(fmt.dims_per_scale, dim=1)
    assert ((back - keys).abs() <= REL * keys.abs() + SUB * s).all()
    if pow2:  # ue8m0: every scale a power of two, so dequantizing is exact
        assert torch.equal(torch.exp2(torch.log2(scales).round()), scales)


def test_hadamard_rotation_keeps_dot_products():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(7, 128, generator=g, dtype=torch.float64), torch.randn(5, 128, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ik.hadamard_rotate(q) @ ik.hadamard_rotate(k).T, q @ k.T)
    with pytest.raises(ValueError):
        ik.hadamard_rotate(torch.randn(3, 96))


@pytest.mark.parametrize("dtype,elems", [(torch.bfloat16, 66), (torch.float32, 33)])
def test_paged_cache_holds_fp8_entries(dtype, elems):
    """The entry fits the cache dtype's elements (132 bytes: 66 bf16 or 33
    float32 values); written through a slot mapping with holes, read back
    through other slots, it is exactly quantize-then-dequantize."""
    fmt = ik.FP8Keys(128, pow2_scales=True)
    assert fmt.entry_elems(dtype) == elems
    cache = torch.zeros(6, 4, elems, dtype=dtype)
    keys = outlying_keys(9, 128, seed=2)
    slots = torch.tensor([22, 3, 17, 0, 9, 10, 11, 5, 23])
    write_index_keys(cache, keys, slots, fmt)
    got = read_index_keys(cache, slots[[4, 0, 8]].view(1, 3), fmt)
    assert got.shape == (1, 3, 128) and got.dtype == torch.float32
    assert torch.equal(got[0], ik.dequantize(ik.quantize(keys[[4, 0, 8]], fmt), fmt))


def test_scores_within_the_bound_the_key_error_implies():
    """I[s] = sum_h w_h relu(c q_h . k_s); relu is 1-Lipschitz, so a key error
    dk moves I[s] by at most c sum_h |w_h| |q_h| . |dk_s|."""
    di, hi, n = 128, 64, 300
    g = torch.Generator().manual_seed(3)
    fmt = ik.FP8Keys(di, pow2_scales=True)
    keys = ik.hadamard_rotate(outlying_keys(n, di, seed=3))
    q = ik.hadamard_rotate(torch.randn(1, 1, hi, di, generator=g))
    w = torch.randn(1, 1, hi, generator=g) * hi**-0.5
    c = di**-0.5
    cache = torch.zeros(n, 1, fmt.entry_elems(torch.bfloat16), dtype=torch.bfloat16)
    write_index_keys(cache, keys, torch.arange(n), fmt)
    deq = read_index_keys(cache, torch.arange(n)[None], fmt)
    got = index_scores(q, w, deq, c)[0, 0]
    exact = index_scores(q, w, keys[None], c)[0, 0]
    bound = c * torch.einsum("h,hd,sd->s", w[0, 0].abs(), q[0, 0].abs(), (deq[0] - keys).abs())
    assert ((got - exact).abs() <= bound * (1 + 1e-5) + 1e-6).all()
    # The bound adds every error's magnitude; signs cancel, so the typical error is far below it.
    assert (got - exact).abs().median() < 0.05 * exact.std()


def test_selection_at_v32_dimensions_mostly_unchanged():
    """64 heads x 128 dims, top 2,048 of 8,192 keys: the FP8 keys pick at least
    97% of what the exact keys pick (98% measured; near-ties at the boundary
    account for the rest)."""
    di, hi, n, k = 128, 64, 8192, 2048
    g = torch.Generator().manual_seed(4)
    fmt = ik.FP8Keys(di, pow2_scales=True)
    keys = outlying_keys(n, di, seed=4)
    q = torch.randn(1, 1, hi, di, generator=g)
    w = torch.randn(1, 1, hi, generator=g) * hi**-0.5
    exact = index_scores(q, w, keys[None], di**-0.5)[0, 0]
    rk, rq = ik.hadamard_rotate(keys), ik.hadamard_rotate(q)
    fp8 = index_scores(rq, w, ik.dequantize(ik.quantize(rk, fmt), fmt)[None], di**-0.5)[0, 0]
    overlap = (topk_mask(exact, k) & topk_mask(fp8, k)).sum().item() / k
    assert overlap >= 0.97


FP8_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "scale_fmt": "ue8m0",
              "weight_block_size": [128, 128]}


@pytest.fixture(scope="module")
def fp8_model(tmp_path_factory):
    """A tiny V3.2 (top-k 8, index keys of 32 dims) whose config says FP8
    (its weights stay float32: the loader passes unquantized tensors through)."""
    from deepseek_v32_tiny import build_deepseek_v32

    path = build_deepseek_v32(tmp_path_factory.mktemp("ds32-fp8"))
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = FP8_CONFIG
    (path / "config.json").write_text(json.dumps(cfg))
    return path, cfg


def test_tiny_fp8_model_cache_bytes_and_identity(fp8_model):
    """The engine's cache holds 36 bytes of indexer key per token per layer
    (32 e4m3 + one scale) beside the float32 latent, and greedy tokens are the
    same alone, batched, chunked and preempted."""
    from conftest import assert_no_leaks
    from jevons import LLM, SamplingParams

    path, cfg = fp8_model
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    g = torch.Generator().manual_seed(5)
    ps = [{"prompt_token_ids": torch.randint(3, cfg["vocab_size"], (n,), generator=g).tolist()} for n in (40, 9, 27, 3)]

    def run(batch, **kw):
        llm = LLM(str(path), dtype="float32", progress=False, **kw)
        outs = [o.outputs[0].token_ids for o in llm.generate(batch, greedy, use_tqdm=False)]
        assert_no_leaks(llm)
        return outs, llm

    alone = [run([p])[0][0] for p in ps]
    batched, llm = run(ps)
    core = llm.engine
    assert core.runner.model.layers[1].self_attn.indexer.c.key_fp8
    per_layer = 4 * (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]) + cfg["index_head_dim"] + 4
    assert core.kv_bytes_per_token == cfg["num_hidden_layers"] * per_layer
    allocated = sum(t.numel() * t.element_size() for pair in core.runner.kv_caches for t in pair)
    assert allocated == core.kv.num_blocks * core.kv.block_size * core.kv_bytes_per_token
    assert batched == alone
    assert run(ps, max_num_batched_tokens=16)[0] == alone
    preempted, llm = run(ps, num_kv_blocks=8, block_size=8)  # 20 blocks of work in 8
    assert preempted == alone and llm.engine.scheduler.num_preemptions > 0


def test_tiny_fp8_model_dense_fallback_matches_transformers(fp8_model, tmp_path):
    """With the top-k above every context the indexer is never consulted: the
    FP8 model's logits are transformers' (the rotation and the FP8 cache
    change nothing else)."""
    from deepseek_v32_tiny import build_deepseek_v32
    from test_deepseek_parity import assert_paged_logits_match
    from test_deepseek_tiny import hf_model

    path = build_deepseek_v32(tmp_path / "dense", index_topk=64)
    hf = hf_model(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = FP8_CONFIG
    (path / "config.json").write_text(json.dumps(cfg))
    assert_paged_logits_match(path, hf)
