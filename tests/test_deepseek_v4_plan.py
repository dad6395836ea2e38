"""DeepSeek-V4's cost figures from its config: parameters counted exactly as
transformers' DeepseekV4 modules hold them (tiny models, several layer mixes,
hc_mult 1 and more), the layer schedule read as transformers reads it, and the
V4-Flash and V4-Pro presets' published sizes and KV bytes per token beside
V3 / V3.2."""
import io
import json

import pytest

from jevons.cost.deepseek_v4_stats import layer_types
from jevons.cost.model_stats import model_stats
from jevons.loader.presets import get_preset

TINY = dict(
    architectures=["DeepseekV4ForCausalLM"], vocab_size=64, hidden_size=32, moe_intermediate_size=16,
    num_attention_heads=4, head_dim=16, q_lora_rank=24, n_routed_experts=4, num_experts_per_tok=2,
    n_shared_experts=1, o_groups=2, o_lora_rank=8, index_n_heads=2, index_head_dim=8, index_topk=3,
    sliding_window=6, partial_rotary_factor=0.5,
)
S, C, H = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"
CASES = {
    "every-type-hc2": dict(num_hidden_layers=4, layer_types=[S, C, H, C], hc_mult=2,
                           compress_rates={C: 4, H: 8}),
    "hca-only-hc1": dict(num_hidden_layers=2, layer_types=[H, H], hc_mult=1, compress_rates={C: 4, H: 16}),
    "csa-hc3-wide": dict(num_hidden_layers=3, layer_types=[C, S, C], hc_mult=3, o_groups=4, index_n_heads=4,
                         compress_rates={C: 2, H: 8}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_parameter_count_matches_transformers(name):
    import torch
    import transformers

    cfg = dict(TINY, **CASES[name])
    with torch.device("meta"):
        model = transformers.DeepseekV4ForCausalLM(transformers.DeepseekV4Config(**cfg))
    assert model_stats(cfg).total_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset,layers,csa,hca,first", [
    ("deepseek-v4-flash", 43, 21, 20, [S, S, C, H]),
    ("deepseek-v4-pro", 61, 30, 31, [H, H, C, H]),
])
def test_layer_schedule_from_compress_ratios_as_transformers_reads_it(preset, layers, csa, hca, first):
    import transformers

    cfg = get_preset(preset)
    ours = layer_types(cfg)
    theirs = transformers.DeepseekV4Config(**cfg).layer_types
    assert ours == theirs and len(ours) == layers
    assert ours[:4] == first and ours.count(C) == csa and ours.count(H) == hca


def test_v4_flash_size_and_kv_bytes():
    v4, v32 = model_stats(get_preset("deepseek-v4-flash")), model_stats(get_preset("deepseek-v3.2"))
    assert v4.total_params / 1e9 == pytest.approx(284, abs=0.5)  # published: 284B total
    assert v4.active_params / 1e9 == pytest.approx(13, abs=0.5)  # and 13B active
    # 21 CSA layers x (512 + 128) / 4 + 20 HCA layers x 512 / 128 values, 2 bytes each.
    assert v4.kv_bytes_per_token(2) == (21 * 640 / 4 + 20 * 4) * 2 == 6_880
    # DeepSeek reports V4's cache as 9.5-13.7x smaller than V3.2's.
    assert 9.5 <= v32.kv_bytes_per_token(2) / v4.kv_bytes_per_token(2) <= 13.7
    # The sliding windows are a per-sequence constant: 43 layers x 128 x 512 values.
    assert v4.kv_bytes_per_seq(10_000, 2) == 10_000 * 6_880 + 43 * 128 * 512 * 2
    assert v4.kv_bytes_per_seq(100, 2) == 100 * 6_880 + 43 * 100 * 512 * 2


def test_v4_pro_size_and_kv_bytes():
    pro = model_stats(get_preset("deepseek-v4-pro"))
    assert pro.total_params / 1e12 == pytest.approx(1.6, abs=0.05)  # published: 1.6T total
    assert pro.active_params / 1e9 == pytest.approx(49, abs=0.5)  # and 49B active
    assert pro.kv_bytes_per_token(2) == (30 * 640 / 4 + 31 * 4) * 2 == 9_848
    assert pro.native_precision == "fp8"


def test_plan_cli_shows_v4_beside_v3():
    import argparse

    from jevons.cost.plan_cli import add_plan_parser

    parser = argparse.ArgumentParser(prog="jevons")
    add_plan_parser(parser.add_subparsers(dest="command"))
    got = {}
    for name in ("deepseek-v3", "deepseek-v3.2", "deepseek-v4-flash", "deepseek-v4-pro"):
        out = io.StringIO()
        args = parser.parse_args(["plan", name, "--hardware", "h200", "--gpus", "8", "--json"])
        assert args.func(args, out=out) == 0
        got[name] = json.loads(out.getvalue())["kv_bytes_per_token"]
    assert got == {"deepseek-v3": 70_272, "deepseek-v3.2": 78_324, "deepseek-v4-flash": 6_880,
                   "deepseek-v4-pro": 9_848}


def test_preset_builds_a_causal_lm_with_a_cache_per_layer_type():
    """The V4-Flash shape (cut to 4 layers: S, S, C, H) on the meta device.
    The engine's blocks hold compressed entries only: per CSA token (512 +
    128) / 4, per HCA token 512 / 128 (at 16-token blocks one HCA entry per
    block: 512 / 16); the window pool each token's window entry and HCA's
    compressor inputs (2 x 512) for 127 tokens, its short lane CSA's inputs
    (2 x (2 x 512) + 2 x (2 x 128)) for 7."""
    import torch

    from jevons.config import ModelConfig
    from jevons.models.interfaces import CausalLM
    from jevons.models.registry import build_model

    cfg = ModelConfig.from_hf({**get_preset("deepseek-v4-flash"), "num_hidden_layers": 4})
    with torch.device("meta"):
        model = build_model(cfg)
    assert isinstance(model, CausalLM)
    assert model.kv_cache_spec() == [((0,), (0,)), ((0,), (0,)), ((128,), (32,)), ((32,), (0,))]
    assert model.kv_cache_spec(128) == [((0,), (0,)), ((0,), (0,)), ((128,), (32,)), ((4,), (0,))]
    layout = model.kv_cache_layout(16)
    assert layout.window == [((512,), (0,)), ((512,), (0,)), ((512,), (0,)), ((512,), (1024,))]
    assert layout.retain == 127
    assert layout.short == [((0,), (0,)), ((0,), (0,)), ((0,), (2560,)), ((0,), (0,))]
    assert layout.short_retain == 7


@pytest.mark.parametrize("block_size, want", [(128, 6_880), (64, 7_040), (16, 8_000)])
def test_engine_bytes_per_token_is_the_plans(block_size, want):
    """The whole V4-Flash preset: the engine's blocks cost the plan's 6,880
    bytes per token in bf16 when the block holds whole HCA groups (128
    tokens); below that each block rounds HCA up to one entry."""
    import torch

    from jevons.config import ModelConfig
    from jevons.models.registry import build_model
    from jevons.runner.model_runner import ModelRunner

    cfg = ModelConfig.from_hf(get_preset("deepseek-v4-flash"))
    with torch.device("meta"):
        model = build_model(cfg)
    per_block = ModelRunner.kv_bytes_per_block(model.kv_cache_spec(block_size), block_size, torch.bfloat16)
    assert per_block // block_size == want
