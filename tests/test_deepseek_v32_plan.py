"""DeepSeek-V3.2's preset: its KV bytes per token read off the model's own
cache spec (latent + rope key, plus the indexer key: e4m3 with a float32
scale per 128 dims, the checkpoint being FP8) agree with the planner's count
from the config, and `jevons plan` shows them beside V3's."""
import io
import json

import pytest
import torch

from jevons.config import ModelConfig
from jevons.cost.model_stats import model_stats
from jevons.loader.presets import get_preset
from jevons.models.interfaces import CausalLM
from jevons.models.registry import build_model
from jevons.runner.model_runner import ModelRunner

V32_BYTES = 78_324  # 61 layers x ((512 latent + 64 rope) x 2 bytes + 128 e4m3 key bytes + 4 scale bytes)
V32_BF16_KEYS = 85_888  # 61 x (512 + 64 + 128) x 2: the indexer key in bf16 (a checkpoint that is not FP8)
V3_BYTES = 70_272  # 61 x (512 + 64) x 2


def meta_model(name: str, layers: int = 4, **overrides):
    """The preset's structure in bf16 (on the meta device: no memory) with
    fewer layers, which repeat: enough to read the per-layer cache spec."""
    cfg = ModelConfig.from_hf({**get_preset(name), "num_hidden_layers": layers, **overrides})
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # as the runner builds a bf16 model (model_loader.materialize)
    try:
        with torch.device("meta"):
            return build_model(cfg)
    finally:
        torch.set_default_dtype(old)


def test_preset_builds_a_causal_lm_with_the_paired_cache():
    model = meta_model("deepseek-v3.2")
    assert isinstance(model, CausalLM)
    spec = model.kv_cache_spec()
    assert len(spec) == 4 and set(spec) == {((576,), (66,))}  # 132 bytes of FP8 key + scale in bf16 elements
    assert model.kv_cache_spec(torch.float32)[0] == ((576,), (33,))
    attn = model.layers[3].self_attn
    assert attn.indexer.c.topk == 2048 and attn.indexer.c.num_heads == 64
    assert attn.indexer.c.key_fp8 and attn.indexer.c.key_scale_pow2  # FP8 checkpoint, ue8m0 scales
    assert model.mtp_layers is None  # the checkpoint's MTP layer is not served


@pytest.mark.parametrize("preset,per_token", [("deepseek-v3.2", V32_BYTES), ("deepseek-v3", V3_BYTES)])
def test_kv_bytes_per_token_spec_and_planner_agree(preset, per_token):
    layers = get_preset(preset)["num_hidden_layers"]
    spec = meta_model(preset, layers=1).kv_cache_spec()
    assert layers * ModelRunner.kv_bytes_per_block(spec, 16, torch.bfloat16) // 16 == per_token
    assert model_stats(get_preset(preset)).kv_bytes_per_token(2) == per_token


def test_indexer_keys_in_the_cache_dtype_without_an_fp8_checkpoint():
    spec = meta_model("deepseek-v3.2", layers=1, quantization_config=None).kv_cache_spec()
    assert spec == [((576,), (128,))]
    assert 61 * ModelRunner.kv_bytes_per_block(spec, 16, torch.bfloat16) // 16 == V32_BF16_KEYS
    assert model_stats({**get_preset("deepseek-v3.2"), "quantization_config": None}).kv_bytes_per_token(2) == V32_BF16_KEYS


def test_planner_counts_the_indexer():
    v3, v32 = model_stats(get_preset("deepseek-v3")), model_stats(get_preset("deepseek-v3.2"))
    # 61 indexers of 1536x64x128 + 7168x128 + 2x128 + 7168x64 parameters.
    assert v32.total_params - v3.total_params == 61 * (1536 * 64 * 128 + 7168 * 128 + 256 + 7168 * 64)
    # Past the top-k, sparse attention costs grow only with the indexer's scoring.
    long, short = 128 * 1024, 2048
    assert v32.attn_flops_per_token(short, True) > v3.attn_flops_per_token(short, True)
    assert v32.attn_flops_per_token(long, True) < v3.attn_flops_per_token(long, True) / 5


def test_plan_cli_shows_v32_beside_v3():
    import argparse

    from jevons.cost.plan_cli import add_plan_parser

    parser = argparse.ArgumentParser(prog="jevons")
    add_plan_parser(parser.add_subparsers(dest="command"))
    got = {}
    for name in ("deepseek-v3", "deepseek-v3.2"):
        args = parser.parse_args(["plan", name, "--hardware", "h200", "--gpus", "8", "--json"])
        out = io.StringIO()
        assert args.func(args, out=out) == 0
        got[name] = json.loads(out.getvalue())["kv_bytes_per_token"]
    assert got == {"deepseek-v3": V3_BYTES, "deepseek-v3.2": V32_BYTES}
