"""Config-only presets run with random weights (load_format="dummy")."""
from conftest import assert_no_leaks
from jevons import LLM, SamplingParams


def test_deepseek_preset_runs_with_dummy_weights():
    # DeepSeek-V2-Lite's architecture at two layers: the real preset's shapes
    # (MLA, 64 routed experts) without 16B parameters of random init.
    from jevons.loader import presets

    name = "deepseek-v2-lite"
    cfg = presets.get_preset(name)
    assert cfg["architectures"] == ["DeepseekV2ForCausalLM"]
    llm = LLM(name, dtype="bfloat16", load_format="dummy", progress=False, max_model_len=256, num_kv_blocks=64,
              hf_overrides={"num_hidden_layers": 2})
    core = llm.engine
    assert core.model_config.hf["kv_lora_rank"] == 512
    out = llm.generate({"prompt_token_ids": list(range(10, 40))}, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 3 and out[0].outputs[0].text.startswith("<")
    assert_no_leaks(llm)
