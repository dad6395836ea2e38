"""The int4 weight-only linear against its plain-torch reference, and a tiny
model served with int4 weights."""
import math

import pytest
import torch

from conftest import assert_no_leaks
from tiny_models import TiedHead
from jevons import runtime
from jevons.kernels.torch_ref.int4_linear import (
    dequantize_int4,
    has_int4_kernel,
    int4_group_size,
    int4_linear,
    int4_linear_ref,
    pack_int4,
    quantize_int4,
    unpack_int4,
)
from jevons.models.layers.linear import QGEMM_ENV, Int4Linear, Int8Linear, quantize_model

TEXT = " ".join(["Paged attention keeps the KV cache in fixed-size blocks, and the fox jumps."] * 30)


@pytest.mark.parametrize("n,k", [(16, 32), (48, 64), (112, 96), (960, 576), (64, 256)])
def test_pack_unpack_roundtrip(n, k):
    # N = 16, 48, 112 leave a partial block of the kernel's 64 (AVX512) or 32 rows.
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    packed = pack_int4(q)
    assert packed.shape == (n, k // 2) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed, k), q)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 16, 37, 130])  # 130: the dequantize path
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k,bias", [(96, 64, True), (80, 128, False), (192, 256, True)])
def test_int4_linear_matches_reference(rows, dtype, n, k, bias):
    g = torch.Generator().manual_seed(rows * 1000 + n)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    q, sz = quantize_int4(w)
    x = torch.randn(rows, k, generator=g).to(dtype)
    got = int4_linear(x, pack_int4(q), sz, 32, b)
    assert got.dtype == dtype and got.shape == (rows, n)
    ref = int4_linear_ref(x, q, sz, 32, b).float()
    # The kernel takes bf16 activations (fp32 ones are rounded to bf16 for it)
    # and accumulates in fp32; outputs are O(sqrt(k)).
    scale = ref.abs().max().item()
    torch.testing.assert_close(got.float(), ref, rtol=0.02, atol=0.01 * scale)


def test_kernel_and_dequant_paths_agree():
    torch.manual_seed(0)
    w, x = torch.randn(64, 128), torch.randn(2, 8, 128, dtype=torch.bfloat16)
    q, sz = quantize_int4(w)
    packed = pack_int4(q)
    kernel = int4_linear(x, packed, sz, 32, None, dequant_min_rows=10**9)
    dequant = int4_linear(x, packed, sz, 32, None, dequant_min_rows=1)
    assert kernel.shape == dequant.shape == (2, 8, 64)
    torch.testing.assert_close(kernel.float(), dequant.float(), rtol=0.02, atol=0.05)


def test_quantization_error_is_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(128, 256)
    w[0, :32] = 0.5  # a constant group: scale 0, represented by its zero
    q, sz = quantize_int4(w)
    assert q.max() <= 15 and sz.shape == (256 // 32, 128, 2) and sz.dtype == torch.bfloat16
    err = (dequantize_int4(q, sz, 32, torch.float32) - w).abs().reshape(128, 8, 32).amax(-1)
    step = sz[..., 0].float().T
    assert bool((err <= step * 0.52 + 1e-3).all())  # round-to-nearest on the bf16-rounded grid
    assert err[0, 0] < 1e-2


def test_recovers_a_q4_1_grid():
    """A weight that is already on a group-32 grid w = d*q + m (ggml Q4_1, what
    the shipped GGUF holds) is re-quantized onto (nearly) the same grid."""
    g = torch.Generator().manual_seed(0)
    d = torch.rand(64, 4, 1, generator=g) * 0.01 + 0.001
    m = -8 * d + torch.randn(64, 4, 1, generator=g) * 0.002
    levels = torch.randint(0, 16, (64, 4, 32), generator=g)
    levels[..., 0], levels[..., 1] = 0, 15  # each group spans its grid, as a min/max quantizer's does
    w = (d * levels + m).reshape(64, 128)
    q, sz = quantize_int4(w)
    assert torch.equal(q.reshape(64, 4, 32).long(), levels)
    err = (dequantize_int4(q, sz, 32, torch.float32) - w).abs().reshape(64, 4, 32).amax(-1, keepdim=True)
    assert bool((err < 0.04 * d).all())  # only bf16 rounding of scale (2^-9 relative, times q <= 15) and zero


def test_group_size_fallbacks():
    assert int4_group_size(960, 576) == 32
    assert int4_group_size(960, 576, 64) == 64
    assert int4_group_size(960, 576, 128) is None  # 256 does not divide 576 either
    assert int4_group_size(960, 48) is None and int4_group_size(100, 64) is None
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 24), torch.nn.Linear(24, 8))
    m.lm_head = torch.nn.Linear(8, 4)
    assert quantize_model(m, "int4") == 3
    # K = 24 and N = 8, 24 do not fit int4: those layers get int8 instead.
    assert [type(m[i]) for i in range(3)] == [Int4Linear, Int8Linear, Int8Linear]
    assert isinstance(m.lm_head, torch.nn.Linear)


def test_hybrid_dense_path_is_the_dequantized_model_and_quantizes_tied_head(monkeypatch):
    monkeypatch.setenv(QGEMM_ENV, "0")  # PyTorch's kernels; tests/test_qgemm.py covers jevons's
    runtime.configure()  # the JEVONS_* switches are read at start
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    hybrid = Int4Linear(lin, keep_dense=True)
    x = torch.randn(16, 64)
    q = unpack_int4(hybrid.qweight, 64)
    # Large batch: the dense copy is the exact dequantization (one model on every path).
    torch.testing.assert_close(hybrid(x), int4_linear_ref(x, q, hybrid.scales_zeros, 32, lin.bias), rtol=1e-5, atol=1e-5)
    assert lin.weight is not hybrid.dense.weight
    ref = int4_linear_ref(x[:1], q, hybrid.scales_zeros, 32, lin.bias)
    torch.testing.assert_close(hybrid(x[:1]), ref, rtol=0.02, atol=0.02)
    compact = Int4Linear(lin)
    assert compact.dense is None
    torch.testing.assert_close(compact(x), int4_linear_ref(x, q, hybrid.scales_zeros, 32, lin.bias), rtol=0.02, atol=0.02)
    big = torch.randn(200, 64)  # dequantized, fp32 math on the same weights
    torch.testing.assert_close(compact(big), int4_linear_ref(big, q, hybrid.scales_zeros, 32, lin.bias), rtol=1e-4, atol=1e-4)

    m = TiedHead(48, 64)
    quantize_model(m, "int4-compact")
    assert isinstance(m.fast_head, Int8Linear)  # an int4 head costs too much perplexity
    assert m.fast_head.dense is None
    h = torch.randn(2, 64)
    exact = h @ m.embed_tokens.weight.T
    torch.testing.assert_close(m.compute_logits(h), exact, rtol=0.1, atol=0.1 * exact.abs().max().item())


@pytest.mark.skipif(not has_int4_kernel(), reason="needs PyTorch's CPU int4 kernel")
@pytest.mark.parametrize("method", ["int4", "int4-compact"])
def test_tiny_model_generates_with_int4(tiny_llama, method):
    from jevons import LLM, SamplingParams
    from jevons.runner.perplexity import perplexity

    ref = LLM(str(tiny_llama), dtype="bfloat16", progress=False)
    base = perplexity(ref.engine, TEXT, ctx=64).perplexity
    llm = LLM(str(tiny_llama), dtype="bfloat16", quantization=method, progress=False)
    layer = llm.engine.runner.model.layers[0]
    assert any(isinstance(m, Int4Linear) for m in layer.modules())
    assert isinstance(llm.engine.runner.model.fast_head, Int8Linear)
    # Prompt logits go through the large-batch path (dense or dequantized).
    ppl = perplexity(llm.engine, TEXT, ctx=64).perplexity
    assert math.isfinite(ppl) and abs(ppl / base - 1) < 0.1
    # Decode rows go through the int4 kernel: greedy output of a batch.
    prompts = ["The quick brown fox", "def add(a, b):", "Paged attention keeps"]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = llm.generate(prompts, params, use_tqdm=False)
    vocab = llm.engine.model_config.vocab_size
    for o in outs:
        ids = o.outputs[0].token_ids
        assert len(ids) == 12 and all(0 <= t < vocab for t in ids)
    assert_no_leaks(llm)


def test_auto_quantization_serves_a_4bit_gguf_at_4_bits_on_a_qgemm_cpu():
    from jevons.kernels.cpu import qgemm
    from jevons.models.layers.linear import resolve_quantization

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # Only where jevons's kernel runs every row count (one model on every path).
    assert resolve_quantization("auto", 4, torch.bfloat16, cpu) == ("int4" if qgemm.available() else "none")
    assert resolve_quantization("auto", 4, torch.float32, cpu) == ("int4" if qgemm.available() else "none")
    assert resolve_quantization("auto", 4, torch.float16, cpu) == "none"  # the kernel reads fp32 or bf16
    assert resolve_quantization("auto", 4, torch.bfloat16, cuda) == "none"
    assert resolve_quantization("auto", 8, torch.bfloat16, cpu) == "none"
    assert resolve_quantization("auto", None, torch.bfloat16, cpu) == "none"
    assert resolve_quantization("int8", None, torch.float32, cpu) == "int8"  # explicit wins


def test_the_default_gguf_reports_4_bit_layers(tiny_llama):
    from jevons.loader.load import load_checkpoint
    from jevons.loader.resolve import resolve_model

    assert load_checkpoint(resolve_model("smollm2-135m-instruct")).stored_bits() == 4  # Q4_1 blocks
    assert load_checkpoint(resolve_model(str(tiny_llama))).stored_bits() is None  # safetensors
