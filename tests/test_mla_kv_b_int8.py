"""MLA's kv_b_proj in 8 bits (models/layers/mla_kv_b.py): the C decode
kernel on int8 rows with row scales (kernels/cpu/csrc/sparse_mla.c) against
its torch reference on the same int8 weights dequantized (float32 rounding)
and against the float weights (the int8 rounding); a thread- and
batch-independent result; the portable (non-AVX2) build; and in a tiny
DeepSeek V2 / V3 / V3.2 model: quantize_model swaps kv_b_proj for the int8
rows and drops the float weight under -q int8/int4 (not under none), the C
decode rows over them match the torch path over their dequantization, and
stay close to the float model."""
import ctypes
import subprocess

import pytest
import torch
from torch import nn

from jevons import runtime
from jevons.kernels.cpu import build
from jevons.kernels.cpu import sparse_mla as cpu
from jevons.kernels.torch_ref import sparse_mla as ref
from jevons.kernels.torch_ref.int8_linear import quantize_int8
from jevons.models.layers.mla_kv_b import Int8KvB
from test_sparse_mla_kernel import SHAPES, make_case

pytestmark = pytest.mark.skipif(build.load() is None, reason="C kernels cannot be built here")

CASES = [([40], 9), ([1, 17, 64, 5], 16), ([33, 2, 20], None), ([50, 18], 17)]
# Beyond test_sparse_mla_kernel's shapes, ones for the int8 AVX2 blocks (R a
# multiple of 64): Dn not a multiple of the 16-row block, Dv not of 4.
INT8_SHAPES = SHAPES + [(5, 20, 8, 64, 14), (3, 40, 16, 128, 6)]


def int8_case(lens, k, shape, dtype, seed=0, block_size=4):
    """make_case's inputs with w replaced by int8 rows + scales (and the float w kept)."""
    q_nope, q_rope, kv, tables, positions, lens_t, w = make_case(lens, k, *shape, dtype, block_size, seed)
    h, rows, r = w.shape
    q, s = quantize_int8(w.float().reshape(-1, r))
    return (q_nope, q_rope, kv, tables, positions, lens_t), q.view(h, rows, r), s.view(h, rows), w


@pytest.mark.parametrize("shape", INT8_SHAPES)
@pytest.mark.parametrize("lens,k", CASES)
def test_int8_matches_the_reference_on_the_same_weights(shape, lens, k):
    """Tight: the same int8 weights, dequantized by the reference; only the
    float32 summation order differs."""
    args, wq, ws, w = int8_case(lens, k, shape, torch.float32)
    got = cpu.sparse_mla_decode(*args, wq, 0.3, w_scale=ws)
    want = ref.sparse_mla_decode(*args, wq, 0.3, w_scale=ws)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # and the reference's dequantization is the float weight within half a step a row
    assert ((ref.kv_b_weight(wq, ws, torch.float32) - w).abs() <= ws[..., None] * 0.5 + 1e-7).all()


@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("lens,k", CASES[1:3])
def test_int8_close_to_the_float_weights(shape, lens, k):
    """Loose: against the float reference on the unquantized weights, the
    error is int8's (a step of amax/127 a row), a percent or two of the output."""
    args, wq, ws, w = int8_case(lens, k, shape, torch.float32, seed=2)
    got = cpu.sparse_mla_decode(*args, wq, 0.3, w_scale=ws)
    want = ref.sparse_mla_decode(*args, w, 0.3)
    err = (got - want).abs().max() / want.abs().max()
    assert 0 < err < 0.03


def test_real_shape():
    """V2-Lite's MLA: 16 heads, Dn 128, Dr 64, R 512, Dv 128, 300 and 1000 tokens."""
    args, wq, ws, w = int8_case([1000, 300], None, (16, 128, 64, 512, 128), torch.float32, seed=3, block_size=64)
    got = cpu.sparse_mla_decode(*args, wq, 0.07, w_scale=ws)
    torch.testing.assert_close(got, ref.sparse_mla_decode(*args, wq, 0.07, w_scale=ws), rtol=1e-5, atol=1e-5)
    want = ref.sparse_mla_decode(*args, w, 0.07)
    assert (got - want).abs().max() / want.abs().max() < 0.03


@pytest.mark.parametrize("shape", SHAPES[:2] + SHAPES[3:4])
def test_int8_bfloat16(shape):
    """bf16 activations, int8 weights: float32 sums throughout, so within one
    bf16 rounding of the float32 reference on the same values."""
    args, wq, ws, _ = int8_case([1, 17, 64, 5], 16, shape, torch.bfloat16, seed=1)
    got = cpu.sparse_mla_decode(*args, wq, 0.3, w_scale=ws)
    assert got.dtype == torch.bfloat16
    f32 = [a.float() if a is not None and a.is_floating_point() else a for a in args]
    want = ref.sparse_mla_decode(*f32, wq, 0.3, w_scale=ws)
    torch.testing.assert_close(got.float(), want, rtol=2**-8, atol=2**-8 * want.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_independent_of_threads_and_batch(dtype):
    args, wq, ws, _ = int8_case([70, 12, 45], 20, (6, 16, 8, 64, 16), dtype, seed=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu.sparse_mla_decode(*args, wq, 0.2, w_scale=ws)
        torch.set_num_threads(2)
        two = cpu.sparse_mla_decode(*args, wq, 0.2, w_scale=ws)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    q_nope, q_rope, kv, tables, positions, lens = args
    alone = cpu.sparse_mla_decode(q_nope[1:2], q_rope[1:2], kv, tables[1:2], positions[1:2], lens[1:2], wq, 0.2,
                                  w_scale=ws)
    assert torch.equal(alone[0], two[1])


def test_int8_without_scales_goes_to_the_reference():
    """int8 weights with no scales are no float weights: the op refuses them
    the way the reference does (it cannot multiply float by int8 rows)."""
    args, wq, ws, _ = int8_case([9, 4], 5, (4, 24, 16, 32, 20), torch.float32, seed=5)
    with pytest.raises(RuntimeError):
        cpu.sparse_mla_decode(*args, wq, 0.5)


def test_the_portable_build_reads_int8(tmp_path, monkeypatch):
    """sparse_mla.c built for a CPU without AVX2 (-march=x86-64-v2: the
    compiler's loops) on int8 rows: the reference's results."""
    cc = build._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    flags = [f for f in build.FLAGS if not f.startswith("-march")]
    target = tmp_path / "sparse_portable.so"
    done = subprocess.run([cc, *flags, "-march=x86-64-v2", "-o", str(target), str(build.CSRC / "sparse_mla.c"),
                           "-lmvec", "-lm"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lib = ctypes.CDLL(str(target))
    lib.jv_sparse_mla_simd.restype = ctypes.c_int
    assert lib.jv_sparse_mla_simd() == 0

    def decode_fn(dtype):
        fn = getattr(lib, f"jv_sparse_mla_decode_{ {torch.float32: 'f32', torch.bfloat16: 'bf16'}[dtype]}")
        fn.argtypes, fn.restype = list(cpu._ARGTYPES), ctypes.c_int
        return fn

    monkeypatch.setattr(cpu, "_kernel", decode_fn)
    for shape in (SHAPES[0], SHAPES[3]):
        args, wq, ws, _ = int8_case([1, 17, 64, 5], 16, shape, torch.float32, seed=7)
        torch.testing.assert_close(cpu.sparse_mla_decode(*args, wq, 0.3, w_scale=ws),
                                   ref.sparse_mla_decode(*args, wq, 0.3, w_scale=ws), rtol=1e-5, atol=1e-5)
        args, wq, ws, _ = int8_case([33, 2, 20], None, shape, torch.bfloat16, seed=8)
        got = cpu.sparse_mla_decode(*args, wq, 0.3, w_scale=ws).float()
        f32 = [a.float() if a is not None and a.is_floating_point() else a for a in args]
        want = ref.sparse_mla_decode(*f32, wq, 0.3, w_scale=ws)
        torch.testing.assert_close(got, want, rtol=2**-8, atol=2**-8 * want.abs().max().item())


# --- in the model -------------------------------------------------------------------------------------------------

def _mla_layers(model):
    from jevons.models.layers.mla import MLAttention

    return [m for m in model.modules() if isinstance(m, MLAttention)]


def _with_dequantized_kv_b(model_int8, model_float):
    """model_float's kv_b_proj set to model_int8's int8 rows, dequantized: the
    same function, in float."""
    for a, b in zip(_mla_layers(model_int8), _mla_layers(model_float)):
        with torch.no_grad():
            b.kv_b_proj.weight.copy_(a.kv_b_proj.dequantized(b.kv_b_proj.weight.dtype))


@pytest.fixture(scope="module", params=["v3", "v2-lite", "v3.2"])
def checkpoint(request, tmp_path_factory):
    from deepseek_v32_tiny import build_deepseek_v32
    from test_deepseek_tiny import build_deepseek

    path = tmp_path_factory.mktemp(request.param.replace(".", ""))
    if request.param == "v3.2":
        return build_deepseek_v32(path)
    kw = {} if request.param == "v3" else dict(q_lora_rank=None, first_k_dense_replace=0)
    return build_deepseek(path, "v3" if request.param == "v3" else "v2", **kw)


@pytest.mark.parametrize("method", ["none", "int8", "int4"])
def test_quantize_model_swaps_kv_b_for_int8_rows(checkpoint, method):
    from jevons.models.layers.linear import quantize_model
    from test_deepseek_tiny import load_jevons

    model = load_jevons(checkpoint)
    before = [m.kv_b_proj.weight.detach().clone() for m in _mla_layers(model)]
    quantize_model(model, method)
    layers = _mla_layers(model)
    assert layers
    if method == "none":
        assert all(type(m.kv_b_proj) is nn.Linear for m in layers)
        return
    assert all(isinstance(m.kv_b_proj, Int8KvB) for m in layers)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert not [n for n in names if "kv_b_proj.weight" in n]  # the float weight is gone
    for m, w in zip(layers, before):
        q, s = m.kv_b_rows()
        assert q.dtype == torch.int8 and s.shape == q.shape[:2]
        assert ((m.kv_b_proj.dequantized() - w).abs() <= m.kv_b_proj.scale[:, None] * 0.5 + 1e-7).all()


def _paged(model, backend, seqs, prompt_lens, steps):
    from test_deepseek_parity import run_paged

    runtime.configure(runtime.RuntimeConfig(kernel_backend=backend))
    try:
        return run_paged(model, seqs, prompt_lens, steps)
    finally:
        runtime.configure(runtime.RuntimeConfig())


def test_int8_decode_in_c_matches_the_dequantized_float_model(checkpoint, monkeypatch):
    """Mixed and chunked prefill, then decode rows, the kv_b rows int8 (the C
    kernel reads them; prefill spans their dequantization) against the float
    model holding that dequantization on the torch path: float32 rounding
    apart. And against the float model it came from: int8's rounding, ~1%."""
    from test_deepseek_parity import rand_seqs
    from test_deepseek_tiny import load_jevons

    calls = []
    real = cpu._kernel

    def counting(dtype):
        fn = real(dtype)

        def call(*a):
            calls.append(a[9] is not None)  # w_scale given: the int8 path
            return fn(*a)

        return call

    monkeypatch.setattr(cpu, "_kernel", counting)
    int8_model, float_model = load_jevons(checkpoint), load_jevons(checkpoint)
    original = load_jevons(checkpoint)
    for m in _mla_layers(int8_model):
        assert m.quantize_owned("int8")
    _with_dequantized_kv_b(int8_model, float_model)
    prompt_lens, steps = [7, 2, 11, 5], 3
    vocab = next(m for m in int8_model.modules() if isinstance(m, nn.Embedding)).num_embeddings
    seqs = rand_seqs(vocab, [n + steps + 2 for n in prompt_lens], seed=2)
    in_c = _paged(int8_model, "cpu", seqs, prompt_lens, steps)
    assert calls and all(calls)
    in_torch = _paged(float_model, "torch", seqs, prompt_lens, steps)
    unquantized = _paged(original, "torch", seqs, prompt_lens, steps)
    for s in in_torch:
        torch.testing.assert_close(in_c[s], in_torch[s], rtol=1e-4, atol=1e-4)
        # (relative RMS, not max: in V3.2 a top-k pick can flip with the rounding)
        assert (in_c[s] - unquantized[s]).norm() < 0.03 * unquantized[s].norm()


def test_quantize_owned_declines_none_and_non_cpu():
    from jevons.models.layers.mla_kv_b import quantizes_kv_b

    w = torch.zeros(4, 4)
    assert quantizes_kv_b("int8", w) and quantizes_kv_b("int4-compact", w)
    assert not quantizes_kv_b("none", w)
    assert not quantizes_kv_b("int8", torch.zeros(4, 4, device="meta"))
