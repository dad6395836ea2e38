"""Model presets: published config.json values, lookup rules."""
import pytest

from jevons.loader.presets import PRESETS, get_preset, list_presets

REQUIRED = [
    "deepseek-v3", "deepseek-r1", "deepseek-v2-lite", "deepseek-v2",
    "deepseek-r1-distill-qwen-1.5b", "deepseek-r1-distill-qwen-7b", "deepseek-r1-distill-qwen-32b",
    "deepseek-r1-distill-llama-8b", "deepseek-r1-distill-llama-70b",
    "llama-3-8b", "llama-3-70b", "qwen2-7b", "smollm2-135m-instruct",
]


def test_all_required_presets_exist():
    assert set(REQUIRED) <= set(list_presets())
    assert list_presets() == sorted(PRESETS)


def test_lookup_is_case_insensitive_and_copies():
    a = get_preset("DeepSeek-V3")
    a["hidden_size"] = 1
    assert get_preset("deepseek-v3")["hidden_size"] == 7168
    a = get_preset("deepseek-v3")
    a["rope_scaling"]["factor"] = 1
    assert get_preset("deepseek-v3")["rope_scaling"]["factor"] == 40


def test_unknown_preset_lists_known_names():
    with pytest.raises(ValueError) as e:
        get_preset("gpt-5")
    assert "deepseek-v3" in str(e.value) and "qwen2-7b" in str(e.value)


def test_deepseek_v3_published_values():
    c = get_preset("deepseek-v3")
    assert c["architectures"] == ["DeepseekV3ForCausalLM"]
    expect = dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432,
                  moe_intermediate_size=2048, num_hidden_layers=61, num_attention_heads=128,
                  num_key_value_heads=128, n_routed_experts=256, n_shared_experts=1,
                  num_experts_per_tok=8, first_k_dense_replace=3, kv_lora_rank=512,
                  q_lora_rank=1536, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128,
                  n_group=8, topk_group=4, topk_method="noaux_tc", scoring_func="sigmoid",
                  routed_scaling_factor=2.5, norm_topk_prob=True, rope_theta=10000,
                  max_position_embeddings=163840, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  num_nextn_predict_layers=1, torch_dtype="bfloat16")
    for k, v in expect.items():
        assert c[k] == v, k
    assert c["rope_scaling"]["type"] == "yarn" and c["rope_scaling"]["factor"] == 40
    assert c["rope_scaling"]["original_max_position_embeddings"] == 4096
    assert c["quantization_config"]["quant_method"] == "fp8"


def test_r1_has_v3_architecture():
    v3, r1 = get_preset("deepseek-v3"), get_preset("deepseek-r1")
    v3.pop("transformers_version"), r1.pop("transformers_version")
    assert v3 == r1


def test_deepseek_v2_family():
    lite, full = get_preset("deepseek-v2-lite"), get_preset("deepseek-v2")
    assert lite["q_lora_rank"] is None and full["q_lora_rank"] == 1536
    assert (lite["num_hidden_layers"], lite["n_routed_experts"], lite["hidden_size"]) == (27, 64, 2048)
    assert (full["num_hidden_layers"], full["n_routed_experts"], full["hidden_size"]) == (60, 160, 5120)
    assert lite["rope_scaling"]["mscale"] == 0.707 and full["topk_method"] == "group_limited_greedy"


@pytest.mark.parametrize("name,hidden,layers,heads,kv,inter,vocab", [
    ("deepseek-r1-distill-qwen-1.5b", 1536, 28, 12, 2, 8960, 151936),
    ("deepseek-r1-distill-qwen-7b", 3584, 28, 28, 4, 18944, 152064),
    ("deepseek-r1-distill-qwen-32b", 5120, 64, 40, 8, 27648, 152064),
    ("deepseek-r1-distill-llama-8b", 4096, 32, 32, 8, 14336, 128256),
    ("deepseek-r1-distill-llama-70b", 8192, 80, 64, 8, 28672, 128256),
    ("llama-3-8b", 4096, 32, 32, 8, 14336, 128256),
    ("llama-3-70b", 8192, 80, 64, 8, 28672, 128256),
    ("qwen2-7b", 3584, 28, 28, 4, 18944, 152064),
    ("smollm2-135m-instruct", 576, 30, 9, 3, 1536, 49152),
])
def test_dense_shapes(name, hidden, layers, heads, kv, inter, vocab):
    c = get_preset(name)
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
            c["num_key_value_heads"], c["intermediate_size"], c["vocab_size"]) == (
        hidden, layers, heads, kv, inter, vocab)
    assert c["torch_dtype"] == "bfloat16" and isinstance(c["architectures"], list)


def test_presets_feed_engine_model_config():
    # The engine's ModelConfig must accept every dense preset unchanged.
    from jevons.config import ModelConfig
    for name in REQUIRED:
        cfg = ModelConfig.from_hf(get_preset(name))
        assert cfg.hidden_size == get_preset(name)["hidden_size"]
    assert ModelConfig.from_hf(get_preset("smollm2-135m-instruct")).tie_word_embeddings is True
