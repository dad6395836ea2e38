"""Routed experts at 4 bits (models/layers/moe_int4.py) against the plain
torch reference on the exact dequantization of the same levels: equal bits in
float32, and within bf16 rounding on PyTorch's int4 kernel in bfloat16."""
from __future__ import annotations

import pytest
import torch

from jevons.kernels.torch_ref.moe import fused_experts
from jevons.kernels.torch_ref.moe_routing import RouterConfig, select_experts
from jevons.models.layers.moe_int4 import Int4Experts

E, H, I, K = 8, 64, 96, 2


def case(tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w13 = torch.randn(E, 2 * I, H, generator=g) * 0.1
    w2 = torch.randn(E, H, I, generator=g) * 0.1
    x = torch.randn(tokens, H, generator=g)
    logits = torch.randn(tokens, E, generator=g)
    weights, ids = select_experts(logits, RouterConfig(num_experts=E, top_k=K, norm_topk_prob=True))
    return Int4Experts(w13, w2), x, weights, ids, (w13, w2)


@pytest.mark.parametrize("tokens", [1, 5, 37])
def test_float32_equals_reference_bit_for_bit(tokens: int) -> None:
    experts, x, weights, ids, _ = case(tokens)
    w13, w2 = experts.dequantized(torch.float32)
    assert torch.equal(experts(x, weights, ids), fused_experts(x, w13, w2, weights, ids))


def test_levels_are_close_to_the_weights() -> None:
    experts, _, _, _, (w13, w2) = case(1)
    d13, d2 = experts.dequantized(torch.float32)
    for got, want in ((d13, w13), (d2, w2)):
        group_range = want.reshape(*want.shape[:-1], -1, 32).aminmax(dim=-1)
        span = (group_range.max - group_range.min).repeat_interleave(32, dim=-1)
        assert ((got - want).abs() <= span / 15 * 0.51 + 1e-6).all()


@pytest.mark.parametrize("tokens", [1, 4, 24])
def test_bfloat16_on_the_int4_kernel(tokens: int) -> None:
    experts, x, weights, ids, _ = case(tokens, seed=1)
    w13, w2 = experts.dequantized(torch.float32)
    ref = fused_experts(x, w13, w2, weights, ids)
    got = experts(x.bfloat16(), weights, ids).float()
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))


def test_unused_experts_are_skipped_and_shapes_checked() -> None:
    experts, x, weights, _, _ = case(3)
    ids = torch.zeros(3, K, dtype=torch.long)  # every row to expert 0
    w13, w2 = experts.dequantized(torch.float32)
    assert torch.equal(experts(x, weights, ids), fused_experts(x, w13, w2, weights, ids))
    with pytest.raises(ValueError, match="groups of 32"):
        Int4Experts(torch.zeros(2, 2 * 48, 64), torch.zeros(2, 64, 48))


def test_deepseek_moe_layer_serves_int4_experts() -> None:
    """DeepseekMoE.quantize_experts_int4: the layer's output is the reference
    layer's on the dequantized experts (shared experts untouched)."""
    from jevons.models.layers.moe import DeepseekMoE

    torch.manual_seed(0)
    router = RouterConfig(num_experts=E, top_k=K, norm_topk_prob=True)
    layer = DeepseekMoE(H, I, router, n_shared=1)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(9, H)
    layer.quantize_experts_int4()
    assert layer.experts.w13.numel() == 0
    w13, w2 = layer.int4_experts.dequantized(torch.float32)
    weights, ids = layer._select(x)  # the router the layer runs (in C on the cpu backend: test_moe_router.py)
    want = fused_experts(x, w13, w2, weights, ids) + layer.shared_experts(x)
    assert torch.equal(layer(x), want)


def test_engine_int4_quantizes_the_routed_experts(tmp_path) -> None:
    """`-q int4` serves a DeepSeek MoE's routed experts at 4 bits, and the
    answer does not depend on the batch it ran in."""
    from conftest import assert_no_leaks
    from jevons import LLM, SamplingParams
    from test_deepseek_tiny import build_deepseek

    llm = LLM(str(build_deepseek(tmp_path, "v3")), dtype="float32", quantization="int4", progress=False)
    moes = [m for m in llm.engine.runner.model.modules() if hasattr(m, "int4_experts")]
    assert moes and all(m.int4_experts is not None for m in moes)
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = [{"prompt_token_ids": list(range(3, 3 + n))} for n in (5, 19, 33)]
    alone = [llm.generate([p], greedy, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
    batched = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
    assert batched == alone
    assert_no_leaks(llm)
