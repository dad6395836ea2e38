"""The C MoE router (kernels/cpu/moe_router.py, csrc/moe_router.c) against the
torch reference (kernels/torch_ref/moe_routing.py): the same expert ids bit
for bit (ties included), weights to float32 rounding, for V2's softmax
(greedy, group-limited) and V3's sigmoid + bias with grouped top-k; the
fused gate GEMV's logits independent of the batch and of the thread count."""
import ctypes
import subprocess

import pytest
import torch

from jevons.kernels.cpu import build, moe_router
from jevons.kernels.torch_ref import moe_routing as ref
from jevons.kernels.torch_ref.moe_routing import RouterConfig

pytestmark = pytest.mark.skipif(build.load() is None, reason="C kernels unavailable")

CONFIGS = [
    RouterConfig(64, 6, "softmax", "greedy", 1, 1, False, 1.0),  # V2-Lite
    RouterConfig(16, 3, "softmax", "greedy", 1, 1, True, 1.5),  # V2, renormalized (not scaled)
    RouterConfig(160, 6, "softmax", "group_limited_greedy", 8, 3, False, 16.0),  # V2
    RouterConfig(256, 8, "sigmoid", "noaux_tc", 8, 4, True, 2.5),  # V3 / R1
    RouterConfig(16, 3, "sigmoid", "noaux_tc", 1, 1, False, 1.0),  # V3, one group, no renormalization
    RouterConfig(12, 4, "sigmoid", "noaux_tc", 4, 2, True, 2.5),  # groups of 3
]


def _bias(cfg: RouterConfig, g: torch.Generator) -> torch.Tensor | None:
    return torch.randn(cfg.num_experts, generator=g) * 0.1 if cfg.method == "noaux_tc" else None


def _same(got, want):
    (w, ids), (w_ref, ids_ref) = got, want
    assert ids.dtype == torch.int64 and w.dtype == torch.float32
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(w, w_ref, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.method}-{c.num_experts}")
def test_select_matches_reference_on_random_logits(cfg):
    g = torch.Generator().manual_seed(cfg.num_experts)
    logits = torch.randn(37, cfg.num_experts, generator=g) * 2
    bias = _bias(cfg, g)
    _same(moe_router.select_experts(logits, cfg, bias), ref.select_experts(logits, cfg, bias))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.method}-{c.num_experts}")
def test_select_matches_reference_on_ties(cfg):
    """Logits from a handful of values: experts and groups tie everywhere, and
    both break ties toward the lower index."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randint(-2, 3, (64, cfg.num_experts), generator=g).float() * 0.5
    logits[0] = 0.0  # every expert and every group tied
    bias = None if cfg.method != "noaux_tc" else torch.randint(0, 2, (cfg.num_experts,), generator=g).float() * 0.25
    _same(moe_router.select_experts(logits, cfg, bias), ref.select_experts(logits, cfg, bias))


def test_select_hand_cases():
    """test_moe_routing.py's V3 cases: group score is the top-2 sum, the bias
    chooses but does not weigh."""
    v3 = RouterConfig(8, 2, "sigmoid", "noaux_tc", 4, 2, True, 2.5)
    p = torch.tensor([0.9, 0.1, 0.6, 0.55, 0.8, 0.7, 0.2, 0.3], dtype=torch.float64)
    logits = (p / (1 - p)).log().float()[None]
    w, ids = moe_router.select_experts(logits, v3)
    assert ids[0].tolist() == [4, 5]
    assert w[0].tolist() == pytest.approx([0.8 / 1.5 * 2.5, 0.7 / 1.5 * 2.5], rel=1e-5)
    bias = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0.9])
    w, ids = moe_router.select_experts(logits, v3, bias)
    assert ids[0].tolist() == [7, 4]
    assert w[0].tolist() == pytest.approx([0.3 / 1.1 * 2.5, 0.8 / 1.1 * 2.5], rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[2], CONFIGS[3], CONFIGS[5]],
                         ids=lambda c: f"{c.method}-{c.num_experts}")
def test_route_fuses_the_gate(cfg, dtype):
    """Logits within float32 rounding of torch's GEMM; ids and weights exactly
    the reference's selection on those logits."""
    g = torch.Generator().manual_seed(2)
    hidden = 256
    x = torch.randn(21, hidden, generator=g).to(dtype)  # 5 tiles of 4 tokens, then 1 alone (12 experts: 8 + 4 alone)
    w = (torch.randn(cfg.num_experts, hidden, generator=g) / hidden**0.5).to(dtype)
    bias = _bias(cfg, g)
    weights, ids, logits = moe_router.route_with_logits(x, w, cfg, bias)
    torch.testing.assert_close(logits, ref.gate_logits(x, w), rtol=1e-5, atol=1e-5)
    _same((weights, ids), ref.select_experts(logits, cfg, bias))
    got = moe_router.route_experts(x, w, cfg, bias)
    assert torch.equal(got[0], weights) and torch.equal(got[1], ids)


def test_route_ties_from_equal_gate_rows():
    """Equal gate rows give bitwise equal logits here (each one dot product in
    one order), so the lower expert wins, as in the reference."""
    cfg = CONFIGS[0]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 128, generator=g)
    w = torch.randn(cfg.num_experts, 128, generator=g)
    w[1::2] = w[0::2]  # experts 2i and 2i + 1 alike
    weights, ids, logits = moe_router.route_with_logits(x, w, cfg)
    assert torch.equal(logits[:, 0::2], logits[:, 1::2])
    _same((weights, ids), ref.select_experts(logits, cfg))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_route_is_batch_and_thread_independent(dtype):
    cfg = CONFIGS[3]
    g = torch.Generator().manual_seed(4)
    x = torch.randn(70, 512, generator=g).to(dtype)  # 70: full 4-token tiles, a remainder, threaded
    w = (torch.randn(cfg.num_experts, 512, generator=g) / 512**0.5).to(dtype)
    bias = _bias(cfg, g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        whole = moe_router.route_with_logits(x, w, cfg, bias)
        torch.set_num_threads(1)
        single = moe_router.route_with_logits(x, w, cfg, bias)
        rows = [moe_router.route_with_logits(x[i : i + 1], w, cfg, bias) for i in (0, 3, 4, 69)]
        odd = moe_router.route_with_logits(x[1:6], w, cfg, bias)  # rows 1..5: other tile positions
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(whole, single):
        assert torch.equal(a, b)
    for i, row in zip((0, 3, 4, 69), rows):
        for a, b in zip(whole, row):
            assert torch.equal(a[i : i + 1], b)
    for a, b in zip(whole, odd):
        assert torch.equal(a[1:6], b)


def test_unsupported_inputs_fall_back_to_the_reference():
    cfg = RouterConfig(2000, 2, "softmax", "greedy")  # more experts than the kernel's stack arrays
    logits = torch.randn(3, 2000)
    _same(moe_router.select_experts(logits, cfg), ref.select_experts(logits, cfg))
    x, w = torch.randn(3, 20), torch.randn(16, 20)  # hidden not a multiple of 8
    cfg = CONFIGS[1]
    _same(moe_router.route_experts(x, w, cfg), ref.route_experts(x, w, cfg))


def test_portable_build_matches(tmp_path):
    """Built for a CPU without AVX2 (-march=x86-64-v2: the plain loops), the
    router gives the same logits bit for bit and the same ids."""
    cc = build._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    flags = [f for f in build.FLAGS if not f.startswith("-march")]
    target = tmp_path / "router_portable.so"
    done = subprocess.run([cc, *flags, "-march=x86-64-v2", "-o", str(target), str(build.CSRC / "moe_router.c"),
                           "-lmvec", "-lm"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lib = ctypes.CDLL(str(target))
    lib.jv_moe_router_simd.restype = ctypes.c_int
    assert lib.jv_moe_router_simd() == 0
    fn = lib.jv_moe_route_f32
    fn.argtypes, fn.restype = list(moe_router._ROUTE), ctypes.c_int
    cfg = CONFIGS[3]
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(11, 256, generator=g), torch.randn(cfg.num_experts, 256, generator=g) / 16
    bias = _bias(cfg, g)
    weights, ids, logits = moe_router.route_with_logits(x, w, cfg, bias)
    lg2 = torch.empty_like(logits)
    ids2, w2 = torch.empty_like(ids), torch.empty_like(weights)
    assert fn(x.data_ptr(), x.stride(0), w.data_ptr(), 11, 256, *moe_router._cfg_args(cfg, bias),
              lg2.data_ptr(), ids2.data_ptr(), w2.data_ptr(), 1) == 0
    assert torch.equal(lg2, logits) and torch.equal(ids2, ids)
    torch.testing.assert_close(w2, weights, rtol=2e-6, atol=1e-7)


def test_simd_path_matches_cpu():
    flags = open("/proc/cpuinfo").read()
    want = "avx2" if (" avx2" in flags and " fma" in flags) else "scalar"
    assert moe_router.simd_path() == want
