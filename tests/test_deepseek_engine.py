"""MLA models through the whole engine: the cache holds only the latent, and
greedy output does not depend on scheduling (batched, chunked, preempted,
with or without prefix caching) -- the engine-core identity tests, on DeepSeek."""
import json

import pytest
import torch

from conftest import assert_no_leaks
from jevons import LLM, SamplingParams
from jevons.config import ModelConfig
from jevons.models.deepseek import DeepseekForCausalLM
from jevons.runner.model_runner import ModelRunner
from test_deepseek_tiny import build_deepseek

GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


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


@pytest.fixture(scope="module")
def batch_prompts(tiny_v3):
    vocab = json.loads((tiny_v3 / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(0)
    ps = [{"prompt_token_ids": torch.randint(3, vocab, (n,), generator=g).tolist()} for n in [50, 7, 33, 64, 18, 90]]
    # Two prompts sharing a 48-token prefix exercise prefix-cache hits.
    ps.append({"prompt_token_ids": ps[0]["prompt_token_ids"][:48] + [5, 6, 7]})
    return ps


def run(model, ps, **kw):
    llm = LLM(str(model), dtype="float32", progress=False, **kw)
    outs = llm.generate(ps, GREEDY, use_tqdm=False)
    assert_no_leaks(llm)
    return [o.outputs[0].token_ids for o in outs], llm


def test_alone_batched_chunked_preempted_identical(tiny_v3, batch_prompts):
    alone = [run(tiny_v3, [p])[0][0] for p in batch_prompts]
    batched, _ = run(tiny_v3, batch_prompts)
    assert batched == alone
    chunked, _ = run(tiny_v3, batch_prompts, max_num_batched_tokens=16)
    assert chunked == alone
    # 14 blocks of 8 tokens cannot hold these 7 sequences at once.
    preempted, llm = run(tiny_v3, batch_prompts, num_kv_blocks=14, block_size=8)
    assert preempted == alone
    assert llm.engine.scheduler.num_preemptions > 0
    nocache, _ = run(tiny_v3, batch_prompts, enable_prefix_caching=False, max_num_batched_tokens=40)
    assert nocache == alone


def test_prefix_cache_hits_and_same_output(tiny_v3, batch_prompts):
    llm = LLM(str(tiny_v3), dtype="float32", progress=False)
    first = llm.generate(batch_prompts[0], GREEDY, use_tqdm=False)[0]
    again = llm.generate(batch_prompts[0], GREEDY, use_tqdm=False)[0]
    assert again.outputs[0].token_ids == first.outputs[0].token_ids
    assert again.num_cached_tokens == 48  # 3 full blocks of 16, last token recomputed
    shared = llm.generate(batch_prompts[-1], GREEDY, use_tqdm=False)[0]
    assert shared.num_cached_tokens == 48
    assert shared.outputs[0].token_ids == run(tiny_v3, [batch_prompts[-1]], enable_prefix_caching=False)[0][0]
    assert_no_leaks(llm)
