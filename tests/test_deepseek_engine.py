"""MLA models through the whole engine: the cache holds only the latent. (That
greedy output does not depend on scheduling is tests/test_engine_identity.py's
harness, which runs on DeepSeek too.)"""
import json

import pytest
import torch

from jevons import LLM
from jevons.config import ModelConfig
from jevons.models.deepseek import DeepseekForCausalLM
from jevons.runner.model_runner import ModelRunner
from test_deepseek_tiny import build_deepseek

def meta_model(hf_cfg: dict) -> DeepseekForCausalLM:
    """The model's structure only (no memory): enough to read its cache spec."""
    with torch.device("meta"):
        return DeepseekForCausalLM(ModelConfig.from_hf(hf_cfg))


@pytest.mark.parametrize("preset,layers,per_token", [
    ("deepseek-v3", 61, 70_272),  # 61 x (512 + 64) x 2 bytes
    ("deepseek-v2-lite", 27, 31_104),  # 27 x (512 + 64) x 2 bytes
])
def test_published_kv_bytes_per_token(preset, layers, per_token):
    from jevons.loader.presets import get_preset

    cfg = get_preset(preset)
    assert cfg["num_hidden_layers"] == layers and cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"] == 576
    spec = meta_model(cfg).kv_cache_spec()
    assert len(spec) == layers and set(spec) == {((576,), (0,))}
    block = 16
    assert ModelRunner.kv_bytes_per_block(spec, block, torch.bfloat16) // block == layers * 576 * 2 == per_token


@pytest.fixture(scope="module")
def tiny_v3(tmp_path_factory):
    return build_deepseek(tmp_path_factory.mktemp("ds-engine"), "v3")


def test_engine_cache_is_latent_only(tiny_v3):
    cfg = json.loads((tiny_v3 / "config.json").read_text())
    llm = LLM(str(tiny_v3), dtype="float32", progress=False)
    entry = cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]
    assert llm.engine.kv_bytes_per_token == cfg["num_hidden_layers"] * entry * 4
    for k, v in llm.engine.runner.kv_caches:
        assert k.shape[2:] == (entry,) and v.numel() == 0
