"""Backend selection in jevons.kernels.registry, and a whole tiny Llama run
through the Triton backend (forced, under the interpreter) against the torch
backend: mixed prefill, extend and decode steps over the same paged cache."""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

import pytest
import torch

from jevons import runtime
from jevons.kernels import registry
from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.models.forward_context import ForwardContext


def test_triton_registry_never_picks_triton_on_cpu(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    want = "cpu" if registry.cpu_kernels_available() else "torch"
    assert registry.backend_for("cpu") == want
    ops = registry.ops_for(torch.device("cpu"))
    assert ops.backend == want
    # Ops without a C kernel keep the torch reference on either CPU backend.
    assert registry.get_op("fp8_linear") is registry.torch_fp8_linear
    monkeypatch.setenv(registry.ENV_VAR, "torch")
    runtime.configure()  # the JEVONS_* switches are read at start
    from jevons.kernels.torch_ref.paged_attention import paged_attention

    assert registry.ops_for(torch.device("cpu")).paged_attention is paged_attention


def test_triton_registry_env_override(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "bogus")
    runtime.configure()  # the JEVONS_* switches are read at start
    with pytest.raises(ValueError):
        registry.backend_for("cpu")
    monkeypatch.setenv(registry.ENV_VAR, "torch")
    runtime.configure()  # the JEVONS_* switches are read at start
    assert registry.backend_for("cuda") == "torch"
    with pytest.raises(ValueError):
        registry.get_op("no_such_op")


def test_triton_registry_cuda_picks_triton_when_importable(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    want = "triton" if registry.triton_available() else "torch"
    assert registry.backend_for("cuda") == want


def test_triton_backend_every_op_resolves():
    pytest.importorskip("triton")
    ops = registry.get_ops("triton")
    assert ops.backend == "triton"
    assert all(callable(getattr(ops, f)) for f in registry.OP_NAMES)


def _steps(model, caches, bs):
    """Prefill two requests (one in two chunks), then two decode steps; hidden states of each."""
    g = torch.Generator().manual_seed(0)
    tables = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    outs = []
    steps = [([7, 5], [0, 0]), ([1, 6], [7, 5]), ([1, 1], [8, 11]), ([1, 1], [9, 12])]
    with torch.inference_mode():
        for q_lens, ctx_lens in steps:
            meta = AttentionMetadata.build(q_lens, ctx_lens, tables, bs)
            ids = torch.randint(3, 300, (sum(q_lens),), generator=g)
            pos = torch.cat([torch.arange(c, c + q) for q, c in zip(q_lens, ctx_lens)])
            outs.append(model(ids, pos, ForwardContext(meta, caches)).clone())
    return outs


def test_triton_backend_runs_tiny_llama(tiny_llama, monkeypatch):
    pytest.importorskip("triton")
    from jevons import LLM

    llm = LLM(str(tiny_llama), dtype="float32", progress=False, enable_prefix_caching=False, block_size=4)
    runner = llm.engine.runner
    monkeypatch.setenv(registry.ENV_VAR, "torch")
    runtime.configure()  # the JEVONS_* switches are read at start
    want = _steps(runner.model, runner.kv_caches, runner.block_size)
    for k, v in runner.kv_caches:
        k.zero_()
        v.zero_()
    monkeypatch.setenv(registry.ENV_VAR, "triton")
    runtime.configure()  # the JEVONS_* switches are read at start
    got = _steps(runner.model, runner.kv_caches, runner.block_size)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_triton_kernels_drop_into_tiny_deepseek(tmp_path, monkeypatch):
    """MLA decode, fused MoE, routing, cache writes and RMSNorm from the
    Triton backend swapped into a tiny DeepSeek-V3 (MLA through the registry;
    MoE on CPU patched in by hand): same greedy tokens and logprobs."""
    pytest.importorskip("triton")
    import jevons.models.layers.moe as moe
    from jevons import LLM, SamplingParams
    from test_deepseek_tiny import build_deepseek

    path = build_deepseek(tmp_path / "v3", "v3")
    prompts = [{"prompt_token_ids": list(range(5, 5 + n))} for n in (9, 3, 14)]
    params = SamplingParams(temperature=0, max_tokens=4, logprobs=2)

    def run() -> list:
        llm = LLM(str(path), dtype="float32", progress=False, block_size=4)
        if os.environ.get(registry.ENV_VAR) == "triton":
            for m in llm.engine.runner.model.modules():
                if isinstance(m, moe.DeepseekMoE):
                    m.experts_fn = registry.get_ops("triton").fused_experts
        return [o.outputs[0] for o in llm.generate(prompts, params)]

    monkeypatch.setenv(registry.ENV_VAR, "torch")
    runtime.configure()  # the JEVONS_* switches are read at start
    want = run()
    ops = registry.get_ops("triton")
    # MLA and the router go through the registry, which the env var below
    # switches to Triton (its route_experts: the gate, then its select_experts).
    monkeypatch.setenv(registry.ENV_VAR, "triton")
    runtime.configure()  # the JEVONS_* switches are read at start
    got = run()
    for a, b in zip(got, want):
        assert a.token_ids == b.token_ids
        for la, lb in zip(a.logprobs, b.logprobs):
            assert la.keys() == lb.keys()
            assert max(abs(la[t] - lb[t]) for t in la) < 1e-4
