"""The fused MoE kernel on qgemm's format (kernels/cpu/moe_qgemm.py,
csrc/moe_qgemm.c) against its plain-torch reference, the experts class that
serves it (models/layers/moe_qgemm.py), and a tiny DeepSeek's greedy tokens
on it against the same model on its experts' exact dequantization."""
from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest
import torch

from jevons.kernels.cpu import build, moe_qgemm, qgemm
from jevons.kernels.torch_ref.int4_linear import quantize_int4
from jevons.kernels.torch_ref.moe import fused_experts
from jevons.kernels.torch_ref.moe_routing import RouterConfig, select_experts
from jevons.loader.gguf_quant import QuantLevels
from jevons.models.layers import moe_qgemm as layer
from jevons.models.layers.moe import DeepseekMoE

needs_kernel = pytest.mark.skipif(not qgemm.available(), reason="needs the C kernels with AVX2 or AVX512-VNNI")


def _qweight(w: torch.Tensor, bits: int) -> qgemm.QWeight:
    """bits 4: our int4 grid (zeros); 40: Q4_0's symmetric grid (no zeros); 8: Q8_0's."""
    if bits == 40:
        wg = w.reshape(w.shape[0], -1, 32)
        scale = (wg.abs().amax(-1) / 8).clamp(min=1e-4).to(torch.float16).float()
        u = (torch.round(wg / scale[..., None]) + 8).clamp(0, 15).to(torch.uint8).reshape(w.shape)
        return qgemm.pack(u, scale, -8 * scale, 4)
    if bits == 4:
        q, sz = quantize_int4(w, 32)
        return qgemm.pack(q, sz[..., 0].T, sz[..., 1].T, 4)
    u, scale = qgemm.quantize_int8_grouped(w)
    return qgemm.pack(u, scale, None, 8)


def _experts(e: int, h: int, i: int, bits13: int, bits2: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w13 = [_qweight(torch.randn(2 * i, h, generator=g) * 0.1, bits13) for _ in range(e)]
    w2 = [_qweight(torch.randn(h, i, generator=g) * 0.1, bits2) for _ in range(e)]
    return moe_qgemm.StackedQWeights.stack(w13), moe_qgemm.StackedQWeights.stack(w2)


def _routing(tokens: int, e: int, k: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, e, generator=g)
    weights, ids = torch.softmax(logits, -1).topk(k, dim=-1)
    return weights, ids


def _close(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.abs().max().item())


@needs_kernel
@pytest.mark.parametrize("bits", [(4, 4), (8, 8), (4, 8), (40, 40), (40, 8)])
@pytest.mark.parametrize("shape", [(8, 64, 96), (5, 128, 32), (16, 96, 64)])
@pytest.mark.parametrize("tokens,k", [(1, 1), (1, 6), (64, 2), (64, 6), (7, 3)])
def test_kernel_matches_reference(bits, shape, tokens, k):
    e, h, i = shape
    k = min(k, e)
    w13, w2 = _experts(e, h, i, *bits)
    weights, ids = _routing(tokens, e, k)
    x = torch.randn(tokens, h, generator=torch.Generator().manual_seed(2))
    _close(moe_qgemm.moe_qgemm(x, w13, w2, weights, ids), moe_qgemm.moe_qgemm_ref(x, w13, w2, weights, ids), 1e-4)


@needs_kernel
def test_shared_experts_idle_experts_and_other_ranks_ids():
    """Every token to one expert (the rest idle), the same expert twice in a
    token's top-k, and ids outside [0, E) (another rank's experts under EP)
    adding nothing."""
    e, h, i = 6, 64, 64
    w13, w2 = _experts(e, h, i, 4, 4, seed=3)
    x = torch.randn(9, h, generator=torch.Generator().manual_seed(4))
    weights = torch.rand(9, 3, generator=torch.Generator().manual_seed(5))
    for ids in (torch.full((9, 3), 2), torch.tensor([[1, 1, 4]] * 9), torch.tensor([[0, -1, 7]] * 9)):
        got = moe_qgemm.moe_qgemm(x, w13, w2, weights, ids)
        _close(got, moe_qgemm.moe_qgemm_ref(x, w13, w2, weights, ids), 1e-4)
    none = moe_qgemm.moe_qgemm(x, w13, w2, weights, torch.full((9, 3), e))
    assert torch.equal(none, torch.zeros_like(none))
    assert moe_qgemm.moe_qgemm(x[:0], w13, w2, weights[:0], torch.zeros(0, 3, dtype=torch.long)).shape == (0, h)


@needs_kernel
def test_a_token_gets_the_same_bits_alone_and_in_a_batch():
    """One model on every path: a row's result is a function of that row."""
    e, h, i = 8, 128, 64
    w13, w2 = _experts(e, h, i, 4, 4, seed=6)
    weights, ids = _routing(64, e, 6, seed=7)
    x = torch.randn(64, h, generator=torch.Generator().manual_seed(8))
    batch = moe_qgemm.moe_qgemm(x, w13, w2, weights, ids)
    for t in (0, 17, 63):
        assert torch.equal(moe_qgemm.moe_qgemm(x[t : t + 1], w13, w2, weights[t : t + 1], ids[t : t + 1]), batch[t : t + 1])


@needs_kernel
def test_bfloat16_activations():
    w13, w2 = _experts(8, 64, 96, 4, 4, seed=9)
    weights, ids = _routing(12, 8, 2, seed=10)
    x = torch.randn(12, 64, generator=torch.Generator().manual_seed(11)).bfloat16()
    got = moe_qgemm.moe_qgemm(x, w13, w2, weights, ids)
    assert got.dtype == torch.bfloat16
    _close(got, moe_qgemm.moe_qgemm_ref(x, w13, w2, weights, ids), 1e-2)  # one bf16 ulp


def _scalar_kernel(tmp_path: Path):
    """csrc/moe_qgemm.c alone, built for a CPU without AVX2 (its portable path)."""
    cc = build._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    flags = [f for f in build.FLAGS if not f.startswith("-march")]
    target = tmp_path / "moe_scalar.so"
    cmd = [cc, *flags, "-march=x86-64-v2", "-o", str(target), str(build.CSRC / "moe_qgemm.c"), "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lib = ctypes.CDLL(str(target))
    lib.jv_moe_qgemm_simd.restype = ctypes.c_int
    assert moe_qgemm.PATHS[lib.jv_moe_qgemm_simd()] == "scalar"
    fn = lib.jv_moe_qgemm_f32
    fn.argtypes, fn.restype = list(moe_qgemm._ARGS), ctypes.c_int
    return fn


@needs_kernel
def test_the_scalar_path_matches_the_reference(tmp_path):
    fn = _scalar_kernel(tmp_path)
    for bits in ((4, 4), (8, 8), (40, 40)):
        w13, w2 = _experts(6, 64, 64, *bits, seed=12)
        weights, ids = _routing(5, 6, 2, seed=13)
        x = torch.randn(5, 64, generator=torch.Generator().manual_seed(14))
        out = torch.empty(5, 64)
        assert fn(x.data_ptr(), 64, 5, 2, ids.contiguous().data_ptr(), weights.contiguous().data_ptr(), 6,
                  w13.blob.data_ptr(), w13.bits, int(w13.has_zero), w2.blob.data_ptr(), w2.bits,
                  int(w2.has_zero), 64, 64, out.data_ptr(), 64, 1) == 0
        _close(out, moe_qgemm.moe_qgemm_ref(x, w13, w2, weights, ids), 1e-4)


@needs_kernel
def test_experts_from_float_are_close_to_the_float_reference_on_their_levels():
    """QgemmExperts.from_float against kernels/torch_ref/moe.fused_experts on
    the exact dequantization: only the int8 activation rounding differs."""
    g = torch.Generator().manual_seed(15)
    e, h, i = 8, 64, 96
    experts = layer.QgemmExperts.from_float(torch.randn(e, 2 * i, h, generator=g) * 0.1,
                                            torch.randn(e, h, i, generator=g) * 0.1)
    w13, w2 = experts.dequantized(torch.float32)
    x = torch.randn(33, h, generator=g)
    weights, ids = select_experts(torch.randn(33, e, generator=g), RouterConfig(num_experts=e, top_k=3))
    got, want = experts(x, weights, ids), fused_experts(x, w13, w2, weights, ids)
    # int8 activations per group of 32 (ggml's Q8 ones) in both GEMMs: 2.4% here,
    # most of it from the heavy-tailed silu(gate) * up before the down projection
    assert ((got - want).norm() / want.norm()).item() < 4e-2


def _moe_layer(e: int = 8, h: int = 64, i: int = 32, seed: int = 16) -> DeepseekMoE:
    torch.manual_seed(seed)
    moe = DeepseekMoE(h, i, RouterConfig(num_experts=e, top_k=2, norm_topk_prob=True), n_shared=1)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.1)
    return moe


@needs_kernel
def test_install_serves_a_deepseek_moe_layer():
    moe = _moe_layer()
    x = torch.randn(11, 64)
    assert layer.install(moe)
    assert isinstance(moe.int4_experts, layer.QgemmExperts) and moe.experts.w13.numel() == 0
    weights, ids = select_experts(moe.gate(x), moe.router, None)
    want = moe_qgemm.moe_qgemm_ref(x, moe.int4_experts.w13, moe.int4_experts.w2, weights, ids)
    _close(moe(x), want + moe.shared_experts(x), 1e-4)


@needs_kernel
def test_install_keeps_a_checkpoints_own_levels():
    """Stacked expert levels from a checkpoint (a GGUF's Q4_1/Q8_0 blocks,
    [E * N, K] rows) are packed as they are, not rounded again."""
    moe = _moe_layer(e=4, h=64, i=32)
    g = torch.Generator().manual_seed(17)

    def levels(n: int, k: int, bits: int) -> QuantLevels:
        u = torch.randint(0, 2**bits, (4 * n, k), generator=g, dtype=torch.uint8)
        scale = torch.rand(4 * n, k // 32, generator=g).half().float()
        zero = torch.randn(4 * n, k // 32, generator=g).half().float() if bits == 4 else torch.zeros(4 * n, k // 32)
        return QuantLevels(u, scale, zero, bits)

    stored = {"gate_proj": levels(32, 64, 4), "up_proj": levels(32, 64, 4), "down_proj": levels(64, 32, 8)}
    lookup = {f"model.layers.1.mlp.experts.{p}.weight": lv for p, lv in stored.items()}
    assert layer.install(moe, lookup.get, "model.layers.1.mlp")
    w13, w2 = moe.int4_experts.dequantized(torch.float32)
    assert moe.int4_experts.w2.bits == 8 and not moe.int4_experts.w2.has_zero

    def exact(lv: QuantLevels) -> torch.Tensor:
        off = qgemm.OFFSET[lv.bits]
        w = (lv.u.float() - off).reshape(lv.u.shape[0], -1, 32) * lv.scale[..., None] + lv.zero[..., None]
        return w.reshape(4, -1, lv.u.shape[1])

    assert torch.equal(w13, torch.cat((exact(stored["gate_proj"]), exact(stored["up_proj"])), dim=1))
    assert torch.equal(w2, exact(stored["down_proj"]))


def test_install_leaves_shapes_the_kernel_does_not_take(monkeypatch):
    moe = _moe_layer(i=48)  # the down projection's K is not a multiple of 32
    assert not layer.install(moe)
    assert moe.int4_experts is None and moe.experts.w13.numel() > 0


class _ReferenceExperts(torch.nn.Module):
    """Experts as a plain-torch reference: `dense`, the float fused_experts on
    the exact dequantization; else moe_qgemm_ref, the kernel's own function."""

    def __init__(self, experts: layer.QgemmExperts, dense: bool) -> None:
        super().__init__()
        self.experts, self.dense = experts, dense
        self.w13, self.w2 = experts.dequantized(torch.float32)

    def forward(self, x, weights, ids):
        if self.dense:
            return fused_experts(x, self.w13.to(x.dtype), self.w2.to(x.dtype), weights, ids)
        return moe_qgemm.moe_qgemm_ref(x, self.experts.w13, self.experts.w2, weights, ids)


def _generate(path: Path, swap: str | None):
    from jevons import LLM, SamplingParams

    llm = LLM(str(path), dtype="float32", quantization="int4", progress=False)
    moes = [m for m in llm.engine.runner.model.modules() if isinstance(m, DeepseekMoE)]
    assert moes and all(isinstance(m.int4_experts, layer.QgemmExperts) for m in moes)
    for m in moes if swap else ():
        m.int4_experts = _ReferenceExperts(m.int4_experts, dense=swap == "dense")
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=5)
    prompts = [{"prompt_token_ids": list(range(3, 3 + n))} for n in (4, 17, 30)]
    return [o.outputs[0] for o in llm.generate(prompts, greedy, use_tqdm=False)]


@needs_kernel
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_tiny_deepseek_greedy_tokens_on_the_fused_experts(tmp_path, version):
    """`-q int4` on a CPU runs the routed experts on the fused kernel.
    - Against the same engine with its experts swapped for the kernel's
      plain-torch reference (same int8 activations): the same greedy tokens,
      log-probabilities within 1e-3.
    - Against the experts' exact float dequantization (no activation
      rounding): the same tokens until a near-tie. The kernel's int8
      activations (ggml's Q8 grid, as llama.cpp runs) move this tiny random
      model's expert outputs by 2-3.5% (its down projection is one group of
      32) and its log-probabilities by ~0.005, and a MoE's routing can flip
      near a tie: one of six prompts diverges at its first token, one at its
      ninth. So: where they part, the kernel's token is among the reference's
      top 5, within 0.3 of its best."""
    from test_deepseek_tiny import build_deepseek

    path = build_deepseek(tmp_path, version)
    fused, ref, dense = (_generate(path, swap) for swap in (None, "ref", "dense"))
    for got, want in zip(fused, ref):
        assert got.token_ids == want.token_ids
        for j, t in enumerate(want.token_ids):
            assert abs(float(got.logprobs[j][t]) - float(want.logprobs[j][t])) < 1e-3
    same = 0
    for got, want in zip(fused, dense):
        d = next((j for j, (a, b) in enumerate(zip(got.token_ids, want.token_ids)) if a != b), None)
        same += len(want.token_ids) if d is None else d
        if d is not None:
            best = max(float(v) for v in want.logprobs[d].values())
            assert best - float(want.logprobs[d].get(got.token_ids[d], -1e9)) < 0.3
    assert same >= 12  # of 24 (v2: 24, v3: 16 when written)


@needs_kernel
def test_expert_parallel_ranks_sum_to_one_process(monkeypatch):
    """Under expert parallelism each rank installs the fused kernel on its own
    four of eight whole experts (the same levels one process gives them) and
    runs the pairs routed to them (DeepseekMoE._local_experts, local ids);
    the ranks' partial outputs add up to one process's, up to the order of
    the float sums (one process sums a token's experts in one pass)."""
    from jevons.models.layers.tensor_parallel import TensorParallel
    from test_deepseek_tensor_parallel import sharded_moe

    monkeypatch.setattr(TensorParallel, "all_reduce", lambda self, x: x)
    full = _moe_layer(e=8, h=64, i=64, seed=18)
    ranks = [sharded_moe(full, r, ep=True) for r in range(2)]
    for m in (full, *ranks):
        assert layer.install(m)
    x = torch.randn(13, 64)
    with torch.no_grad():
        _close(ranks[0](x) + ranks[1](x), full(x), 1e-5)


@needs_kernel
def test_a_gguf_s_expert_blocks_are_served_as_stored(tmp_path):
    """A tiny DeepSeek-V3 GGUF with Q4_0 matrices, `-q int4`: every MoE
    layer's fused experts hold exactly the file's expert values (its Q4_0
    blocks packed as they are, not rounded from floats again)."""
    from gguf_deepseek_writer import write_deepseek_gguf
    from loader_fixtures import Q, smollm2_gguf
    from jevons import LLM, SamplingParams
    from jevons.loader.gguf_reader import GGUFFile, open_gguf
    from test_deepseek_tiny import build_deepseek, hf_model

    hf = hf_model(build_deepseek(tmp_path / "hf", "v3", vocab_size=512))
    path = tmp_path / "q4_0.gguf"
    write_deepseek_gguf(path, hf, kind=Q.Q4_0, tokenizer_from=open_gguf(smollm2_gguf()))
    llm = LLM(str(path), dtype="float32", quantization="int4", progress=False)
    f = GGUFFile(path)
    moes = [(n, m) for n, m in llm.engine.runner.model.named_modules() if isinstance(m, DeepseekMoE)]
    assert moes
    for name, m in moes:
        assert isinstance(m.int4_experts, layer.QgemmExperts)
        i = int(name.split(".")[1])
        w13, w2 = m.int4_experts.dequantized(torch.float32)
        gate, up, down = (f.read(f"blk.{i}.ffn_{p}_exps.weight").float() for p in ("gate", "up", "down"))
        assert torch.equal(w13, torch.cat((gate, up), dim=1)) and torch.equal(w2, down)
    out = llm.generate([{"prompt_token_ids": list(range(3, 20))}], SamplingParams(temperature=0, max_tokens=4),
                       use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


def test_experts_with_and_without_zeros_stack_as_the_same_weights():
    """A Q4_0 expert (no zeros) beside one with zeros: both stored with zeros, each exact."""
    g = torch.Generator().manual_seed(11)
    u = torch.randint(0, 16, (32, 64), generator=g, dtype=torch.uint8)
    scale = (torch.rand(32, 2, generator=g) + 0.01).to(torch.float16).float()
    sym = qgemm.pack(u, scale, -8 * scale, 4)
    asym = qgemm.pack(u, scale, torch.randn(32, 2, generator=g), 4)
    assert not sym.has_zero and asym.has_zero
    stacked = moe_qgemm.StackedQWeights.stack([sym, asym])
    assert stacked.has_zero
    for e, part in enumerate((sym, asym)):
        assert torch.equal(qgemm.dequantize(stacked.expert(e), torch.float32), qgemm.dequantize(part, torch.float32))
    alone = moe_qgemm.StackedQWeights.stack([sym, sym])
    assert not alone.has_zero and torch.equal(alone.with_zeros().dequantize(torch.float32), alone.dequantize(torch.float32))
