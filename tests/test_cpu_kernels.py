"""The C kernels of the "cpu" backend against their torch references on random
inputs; skipped where the kernels cannot be built (no compiler, not x86-64)."""
import math
import os

import pytest
import torch

from jevons import runtime
from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.kernels.cpu import build
from jevons.kernels.cpu import paged_attention as cpu_attn
from jevons.kernels.torch_ref import paged_attention as ref

pytestmark = pytest.mark.skipif(build.load() is None, reason="C kernels cannot be built here")


def _random_batch(case, block_size, hq, hkv, d, dtype, seed=0):
    """A paged cache holding each sequence's context in scattered blocks, plus
    this step's q/k/v (already written), for `case` = [(context, new tokens)]."""
    g = torch.Generator().manual_seed(seed)
    num_blocks = sum(math.ceil((c + q) / block_size) for c, q in case) + 3
    kc = torch.randn(num_blocks, block_size, hkv, d, generator=g).to(dtype)
    vc = torch.randn(num_blocks, block_size, hkv, d, generator=g).to(dtype)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables = [[perm.pop() for _ in range(math.ceil((c + q) / block_size))] for c, q in case]
    width = max(len(t) for t in tables)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    meta = AttentionMetadata.build([q for _, q in case], [c for c, _ in case], bt, block_size)
    n = sum(q for _, q in case)
    q = torch.randn(n, hq, d, generator=g).to(dtype)
    k = torch.randn(n, hkv, d, generator=g).to(dtype)
    v = torch.randn(n, hkv, d, generator=g).to(dtype)
    ref.write_kv(kc, vc, k, v, meta.slot_mapping)
    return q, k, v, kc, vc, meta


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("hq,hkv,d", [(4, 4, 8), (9, 3, 64), (8, 1, 32), (6, 2, 80), (12, 2, 128), (5, 1, 96)])
@pytest.mark.parametrize("block_size", [1, 16])
@pytest.mark.parametrize("case", [
    [(0, 1)],  # first token: attends to itself only
    [(5, 1), (40, 1), (16, 1), (1, 1)],  # decodes of varied lengths, block boundaries
    [(0, 9), (12, 1), (16, 5), (3, 1), (31, 1)],  # decodes mixed with prefill and an extend
])
def test_cpu_paged_attention_matches_reference(dtype, tol, hq, hkv, d, block_size, case):
    q, k, v, kc, vc, meta = _random_batch(case, block_size, hq, hkv, d, dtype)
    want = ref.paged_attention(q, k, v, kc, vc, meta, d**-0.5)
    got = cpu_attn.paged_attention(q, k, v, kc, vc, meta, d**-0.5)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_cpu_paged_attention_runs_the_vector_path_this_cpu_has():
    text = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    want = "avx512" if "avx512f" in flags else "avx2" if {"avx2", "fma"} <= flags else "scalar"
    assert cpu_attn.simd_path() == want


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_paged_attention_long_context_and_threads(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        case = [(700, 1), (3, 1), (1500, 1)]
        q, k, v, kc, vc, meta = _random_batch(case, 16, 9, 3, 64, torch.float32, seed=1)
        want = ref.paged_attention(q, k, v, kc, vc, meta, 0.125)
        got = cpu_attn.paged_attention(q, k, v, kc, vc, meta, 0.125)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cpu_paged_attention_reads_strided_q_views():
    """The model hands over q as a view of the fused QKV output."""
    case = [(10, 1), (20, 1)]
    _, k, v, kc, vc, meta = _random_batch(case, 4, 4, 2, 16, torch.float32)
    qkv = torch.randn(2, (4 + 2 + 2) * 16)
    q = qkv[:, : 4 * 16].view(2, 4, 16)
    assert not q.is_contiguous()
    want = ref.paged_attention(q, k, v, kc, vc, meta, 0.25)
    got = cpu_attn.paged_attention(q, k, v, kc, vc, meta, 0.25)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cpu_kernels_build_is_cached(tmp_path, monkeypatch):
    """A second load of the same sources reuses the library; a new cache dir builds again."""
    monkeypatch.setenv("JEVONS_KERNEL_CACHE", str(tmp_path))
    build.load.cache_clear()
    try:
        assert build.load() is not None
        files = list(tmp_path.glob("jevons_cpu_*.so"))
        assert len(files) == 1
        build.load.cache_clear()
        assert build.load() is not None and list(tmp_path.glob("jevons_cpu_*.so")) == files
    finally:
        monkeypatch.undo()
        build.load.cache_clear()


def test_cpu_kernels_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(build.ENV_VAR, "0")
    runtime.configure()  # the JEVONS_* switches are read at start
    build.load.cache_clear()
    try:
        assert build.load() is None
    finally:
        monkeypatch.undo()
        build.load.cache_clear()


# --- elementwise ops -----------------------------------------------------------
from jevons.kernels import registry  # noqa: E402
from jevons.kernels.cpu import elementwise as cpu_ew  # noqa: E402
from jevons.models.layers.rotary import apply_rotary  # noqa: E402

DTYPES = [(torch.float32, 0.0), (torch.bfloat16, 1e-2)]  # fp32 rounds as torch does; bf16 may differ by an ulp


def _close(got, want, tol):
    if tol == 0.0:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    else:
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("rows,dim", [(1, 576), (7, 64), (300, 256)])
def test_cpu_rms_norm_matches_reference(dtype, tol, rows, dim):
    g = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, dim, generator=g) * 3).to(dtype)
    res = torch.randn(rows, dim, generator=g).to(dtype)
    w = torch.randn(dim, generator=g).to(dtype)
    _close(cpu_ew.rms_norm(x, w, 1e-5), registry.torch_rms_norm(x, w, 1e-5), tol)
    got, got_sum = cpu_ew.fused_add_rms_norm(x, res, w, 1e-6)
    want, want_sum = registry.torch_add_rms_norm(x, res, w, 1e-6)
    torch.testing.assert_close(got_sum, want_sum, rtol=0, atol=0)  # one rounded add: exact
    _close(got, want, tol)


def test_cpu_rms_norm_falls_back_on_mixed_dtypes():
    x = torch.randn(3, 16).bfloat16()
    w = torch.randn(16)  # float32 weight on bf16 activations promotes: the reference's job
    torch.testing.assert_close(cpu_ew.rms_norm(x, w, 1e-6), registry.torch_rms_norm(x, w, 1e-6))


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("n,hq,hk,d", [(1, 9, 3, 64), (5, 4, 4, 16), (33, 8, 2, 128)])
def test_cpu_rotary_matches_reference_on_qkv_views(dtype, tol, n, hq, hk, d):
    g = torch.Generator().manual_seed(n)
    qkv = torch.randn(n, (hq + 2 * hk) * d, generator=g).to(dtype)
    q, k, _ = qkv.split([hq * d, hk * d, hk * d], dim=-1)
    q, k = q.view(n, hq, d), k.view(n, hk, d)
    ang = torch.rand(n, 1, d // 2, generator=g) * 50
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(dtype)
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(dtype)
    got_q, got_k = cpu_ew.apply_rotary(q, k, cos, sin)
    want_q, want_k = apply_rotary(q, k, cos, sin)
    _close(got_q, want_q, tol)
    _close(got_k, want_k, tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_write_kv_matches_reference(dtype):
    g = torch.Generator().manual_seed(0)
    n, hkv, d = 6, 3, 16
    qkv = torch.randn(n, (4 + 2 * hkv) * d, generator=g).to(dtype)
    k = qkv[:, 4 * d : (4 + hkv) * d].view(n, hkv, d)
    v = qkv[:, (4 + hkv) * d :].view(n, hkv, d)
    slots = torch.tensor([5, 0, 17, 9, 30, 2])
    caches = [torch.zeros(4, 8, hkv, d, dtype=dtype) for _ in range(4)]
    cpu_ew.write_kv(caches[0], caches[1], k, v, slots)
    ref.write_kv(caches[2], caches[3], k, v, slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("rows,inter", [(1, 1536), (40, 96)])
def test_cpu_silu_and_mul_matches_reference(dtype, tol, rows, inter):
    x = (torch.randn(rows, 2 * inter, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    _close(cpu_ew.silu_and_mul(x), registry.torch_silu_and_mul(x), tol if dtype == torch.bfloat16 else 1e-6)


def test_without_a_compiler_the_engine_runs_on_torch_references(tiny_llama, tmp_path, monkeypatch):
    """A machine with no working C compiler: the build fails quietly, the
    registry falls back to the torch backend and generation still works."""
    from jevons import LLM, SamplingParams
    from jevons.kernels import registry

    monkeypatch.setenv("JEVONS_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    build.load.cache_clear()
    registry._by_device.clear()
    try:
        assert build.load() is None and registry.backend_for("cpu") == "torch"
        llm = LLM(str(tiny_llama), dtype="float32")
        out = llm.generate([{"prompt_token_ids": [5, 9, 2, 44]}], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True),
                           use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 5
    finally:
        monkeypatch.undo()
        build.load.cache_clear()
        registry._by_device.clear()
