"""The one-call decode step (kernels/cpu/llama_decode.py) gives exactly what
the PyTorch modules give, and steps it does not cover fall back to them."""
from __future__ import annotations

import pytest

from conftest import assert_no_leaks
from jevons import LLM, SamplingParams
from jevons.kernels.cpu import qgemm
from jevons.kernels.cpu.llama_decode import ENV_VAR, LlamaDecodePlan

pytestmark = pytest.mark.skipif(not qgemm.available(), reason="needs the C kernels with AVX2 or AVX512-VNNI")

PROMPTS = [{"prompt_token_ids": [5, 9, 2, 44, 7]}, {"prompt_token_ids": list(range(3, 40))},
           {"prompt_token_ids": [11] * 17}]


def _run(path, dtype: str, quantization: str, fused: bool, monkeypatch, prompts=PROMPTS):
    monkeypatch.setenv(ENV_VAR, "1" if fused else "0")
    # Every request fits the running batch, so all of them decode in the same steps.
    llm = LLM(str(path), dtype=dtype, quantization=quantization, progress=False, max_num_seqs=max(len(prompts), 8))
    p = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, logprobs=3)
    outs = llm.generate(prompts, p, use_tqdm=False)
    got = [(o.outputs[0].token_ids, [sorted((t, lp.logprob) for t, lp in step.items()) for step in o.outputs[0].logprobs])
           for o in outs]
    assert_no_leaks(llm)
    return llm, got


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])  # qwen2: q/k/v biases
@pytest.mark.parametrize("dtype,quantization", [("float32", "int4-compact"), ("bfloat16", "int4"),
                                                ("bfloat16", "int8-compact")])
def test_fused_decode_is_identical_to_the_modules(request, monkeypatch, fixture, dtype, quantization):
    path = request.getfixturevalue(fixture)
    _, want = _run(path, dtype, quantization, False, monkeypatch)
    llm, got = _run(path, dtype, quantization, True, monkeypatch)
    assert isinstance(llm.engine.runner.model._decode_plan, LlamaDecodePlan)
    assert got == want  # tokens and logprobs, to the bit


def test_uncovered_models_and_large_batches_run_the_modules(tiny_llama, monkeypatch):
    llm, _ = _run(tiny_llama, "float32", "none", True, monkeypatch)
    assert llm.engine.runner.model._decode_plan is False  # dense weights: no plan
    # Modules and plan run qgemm at every row count (no dense copy), so the
    # plan's limit is COMPACT_MAX_ROWS; a small one here keeps the test fast.
    monkeypatch.setattr(qgemm, "COMPACT_MAX_ROWS", 6)
    from jevons.kernels.cpu import llama_decode as llama_decode_plan

    taken: list[int] = []
    fused = llama_decode_plan.fused_decode

    def counting(model, x, positions, ctx):
        out = fused(model, x, positions, ctx)
        if out is not None:
            taken.append(x.shape[0])
        return out

    monkeypatch.setattr(llama_decode_plan, "fused_decode", counting)
    for count in (6, 10):
        some = [{"prompt_token_ids": [3 + i, 8, 1 + i]} for i in range(count)]
        _, want = _run(tiny_llama, "float32", "int4", False, monkeypatch, some)
        taken.clear()
        llm, got = _run(tiny_llama, "float32", "int4", True, monkeypatch, some)
        plan = llm.engine.runner.model._decode_plan
        assert isinstance(plan, LlamaDecodePlan) and plan.max_rows == 6
        assert (max(taken) == 6) if count == 6 else not taken  # all rows decode together
        assert got == want
