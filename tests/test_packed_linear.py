"""Prepacked (oneDNN) linears against F.linear, and pack_model on real models."""
import pytest
import torch

from jevons import runtime
from jevons import LLM, SamplingParams
from jevons.models.layers import packed_linear
from jevons.models.layers.linear import Int8Linear
from jevons.models.layers.packed_linear import PackedLinear, pack_linear, pack_model

pytestmark = pytest.mark.skipif(not packed_linear.prepack_available(), reason="no oneDNN prepacking in this torch")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 64, 300])
def test_packed_linear_matches_f_linear(dtype, tol, bias, rows):
    g = torch.Generator().manual_seed(rows)
    lin = torch.nn.Linear(96, 160, bias=bias).to(dtype)
    x = torch.randn(rows, 96, generator=g).to(dtype)
    with torch.inference_mode():
        want = torch.nn.functional.linear(x, lin.weight, lin.bias).float()
        packed = pack_linear(lin)
        if dtype == torch.bfloat16 and not isinstance(packed, PackedLinear):
            pytest.skip("oneDNN packs bf16 only with AVX512 (or AVX-NE-CONVERT); pack_linear kept the nn.Linear")
        assert isinstance(packed, PackedLinear)
        got = packed(x).float()
        got3 = packed(x.view(1, rows, 96)).float()  # leading dims pass through
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())
    torch.testing.assert_close(got3.view(rows, 160), got)


def test_pack_linear_leaves_what_it_cannot_pack():
    half = torch.nn.Linear(8, 8).half()  # fp16: not a dtype we pack
    assert pack_linear(half) is half


def test_pack_model_only_touches_models_that_opt_in():
    m = torch.nn.Sequential(torch.nn.Linear(8, 8))
    assert pack_model(m) == 0 and type(m[0]) is torch.nn.Linear


def test_prepack_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(packed_linear.ENV_VAR, "0")
    runtime.configure()  # the JEVONS_* switches are read at start
    lin = torch.nn.Linear(8, 8)
    assert pack_linear(lin) is lin


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_engine_packs_llama_and_greedy_output_is_unchanged(tiny_llama, quantization, monkeypatch):
    """Packing changes no greedy token (fp32), and every dense layer, the int8
    layers' dense copies and the tied head's copy are packed."""
    prompts = [{"prompt_token_ids": [5, 9, 2, 44, 7]}, {"prompt_token_ids": list(range(3, 40))}]
    p = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    monkeypatch.setenv(packed_linear.ENV_VAR, "0")
    runtime.configure()  # the JEVONS_* switches are read at start
    plain = LLM(str(tiny_llama), dtype="float32", quantization=quantization)
    want = [o.outputs[0].token_ids for o in plain.generate(prompts, p, use_tqdm=False)]
    monkeypatch.setenv(packed_linear.ENV_VAR, "1")
    runtime.configure()  # the JEVONS_* switches are read at start
    llm = LLM(str(tiny_llama), dtype="float32", quantization=quantization)
    model = llm.engine.runner.model
    assert not any(type(mod) is torch.nn.Linear for mod in model.modules())
    if quantization == "none":
        head = model.lm_head if model.lm_head is not None else model.fast_head
        assert isinstance(head, PackedLinear)
    elif model.fast_head.qw is not None:
        # On jevons's qgemm kernel (AVX512-VNNI or AVX2) int8 layers run it at
        # every row count and keep no dense copy: nothing there to pack.
        assert isinstance(model.fast_head, Int8Linear) and model.fast_head.dense is None
    else:
        assert isinstance(model.fast_head, Int8Linear) and isinstance(model.fast_head.dense, PackedLinear)
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, p, use_tqdm=False)]
    assert got == want


def test_malloc_tuning_is_optional(monkeypatch):
    from jevons.runner import cpu_malloc

    cpu_malloc.tune_malloc.cache_clear()
    monkeypatch.setenv(cpu_malloc.ENV_VAR, "0")
    runtime.configure()  # the JEVONS_* switches are read at start
    try:
        assert cpu_malloc.tune_malloc() is False
    finally:
        cpu_malloc.tune_malloc.cache_clear()
