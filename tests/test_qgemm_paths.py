"""Which SIMD path of csrc/qgemm.c runs on this CPU, and that every path gets
the same integer dot products: the build's own path (AVX2 or AVX512-VNNI)
and the portable scalar loops, built here with -march=x86-64-v2."""
from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest
import torch

from jevons.kernels.cpu import build, qgemm

needs_kernel = pytest.mark.skipif(not qgemm.available(), reason="needs the C kernels with AVX2 or AVX512-VNNI")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def test_the_path_is_the_best_this_cpu_has():
    if build.load() is None:
        pytest.skip("no C kernels here")
    flags = _cpu_flags()
    if {"avx512f", "avx512bw", "avx512_vnni"} <= flags:
        want = "avx512-vnni"
    elif {"avx2", "fma", "f16c"} <= flags:
        want = "avx2"
    else:
        want = "scalar"
    assert qgemm.simd_path() == want
    assert qgemm.available() == (want != "scalar")


def _exact_case(bits: int, n: int, k: int, rows: int, seed: int) -> tuple[qgemm.QWeight, torch.Tensor, torch.Tensor]:
    """Weights at scale 1, zero 0 and integer activations whose every group
    reaches 127 (so d = 1 and xq = x): the kernel's output is then the integer
    product itself, exact in float32. Levels and activations sit at their
    extremes, where an int16 pair sum would saturate if a path let it."""
    g = torch.Generator().manual_seed(seed)
    top = 2**bits - 1
    u = torch.randint(0, top + 1, (n, k), generator=g, dtype=torch.uint8)
    u[: n // 2, : k // 2] = torch.where(torch.rand(n // 2, k // 2, generator=g) < 0.5, 0, top).to(torch.uint8)
    x = torch.randint(-127, 128, (rows, k), generator=g).float()
    x[:, : k // 2] = torch.where(torch.rand(rows, k // 2, generator=g) < 0.5, -127.0, 127.0)
    x.view(rows, k // 32, 32)[:, :, 7] = 127.0
    ones = torch.ones(n, k // 32)
    qw = qgemm.pack(u, ones, None, bits)  # no zeros: 4-bit levels at offset 8
    exact = (x.double() @ (u.double() - qgemm.level_offset(bits, False)).T).float()
    return qw, x, exact


@needs_kernel
@pytest.mark.parametrize("bits", [4, 8])
def test_integer_dot_products_are_exact_at_the_extremes(bits):
    qw, x, exact = _exact_case(bits, 64, 256, 9, seed=bits)
    assert torch.equal(qgemm.qgemm(x, qw), exact)
    assert torch.equal(qgemm.qgemm_ref(x, qw), exact)
    # The same weights in a blob with zeros (4-bit: offset 0, zero -8): the same integers.
    assert torch.equal(qgemm.qgemm(x, qgemm.with_zeros(qw)), exact)
    assert torch.equal(qgemm.qgemm_ref(x, qw), exact)


def _scalar_library(tmp_path: Path) -> ctypes.CDLL:
    """csrc/qgemm.c alone, built for a CPU without AVX2 (its portable path)."""
    cc = build._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    flags = [f for f in build.FLAGS if not f.startswith("-march")]
    target = tmp_path / "qgemm_scalar.so"
    cmd = [cc, *flags, "-march=x86-64-v2", "-o", str(target), str(build.CSRC / "qgemm.c"), "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return ctypes.CDLL(str(target))


def _run(lib: ctypes.CDLL, x: torch.Tensor, qw: qgemm.QWeight, bias: torch.Tensor | None) -> torch.Tensor:
    fn = lib.jv_qgemm_f32
    fn.argtypes, fn.restype = list(qgemm._ARGS), ctypes.c_int
    out = torch.empty(x.shape[0], qw.n)
    rc = fn(x.data_ptr(), x.stride(0), qw.blob.data_ptr(), qw.bits, int(qw.has_zero),
            bias.data_ptr() if bias is not None else None, out.data_ptr(), qw.n, x.shape[0], qw.n, qw.k, 1)
    assert rc == 0
    return out


@needs_kernel
@pytest.mark.parametrize("bits", [4, 8])
def test_the_scalar_path_gets_the_same_integers(tmp_path, bits):
    lib = _scalar_library(tmp_path)
    sim = lib.jv_qgemm_simd
    sim.restype = ctypes.c_int
    assert qgemm.PATHS[sim()] == "scalar"
    qw, x, exact = _exact_case(bits, 48, 128, 5, seed=10 + bits)
    assert torch.equal(_run(lib, x, qw, None), exact)
    # Random weights with zeros and a bias: the same integers, then float steps
    # that may round differently (the scalar build has no fma here).
    g = torch.Generator().manual_seed(bits)
    u = torch.randint(0, 2**bits, (48, 128), generator=g, dtype=torch.uint8)
    qw = qgemm.pack(u, torch.rand(48, 4, generator=g), torch.randn(48, 4, generator=g), bits)
    x, bias = torch.randn(6, 128, generator=g), torch.randn(48, generator=g)
    got, want = _run(lib, x, qw, bias), qgemm.qgemm(x, qw, bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@needs_kernel
def test_activation_rounding_matches_the_reference_at_a_tie():
    """A group whose amax makes 127 / amax round so that x * inv lands just
    below a half (found in SmolLM2's first layer): the reference must divide
    as the C code does, or the two round that activation to different levels."""
    amax = 0.6971448063850403
    inv = torch.tensor(127.0) / torch.tensor(amax)
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = amax, -7.5 / inv.item()
    # find a value whose product with inv is within an ulp of -7.5 from below
    while (x[0, 1] * inv).item() <= -7.5:
        x[0, 1] = torch.nextafter(x[0, 1], torch.tensor(0.0))
    assert abs((x[0, 1] * inv).item() + 7.5) < 1e-5
    g = torch.Generator().manual_seed(5)
    u = torch.randint(0, 16, (16, 32), generator=g, dtype=torch.uint8)
    qw = qgemm.pack(u, torch.rand(16, 1, generator=g), torch.randn(16, 1, generator=g), 4)
    xq, _ = qgemm.quantize_activations(x)
    assert xq[0, 0, 1].item() == -7.0
    torch.testing.assert_close(qgemm.qgemm(x, qw), qgemm.qgemm_ref(x, qw), rtol=1e-5, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("kind", ["int4", "q4_0", "int8"])
def test_a_row_gets_the_same_bits_in_every_block_size(kind):
    """Blocks of few rows run both tile halves group by group, bigger ones a
    half at a time: the same float steps per output, so the same bits."""
    g = torch.Generator().manual_seed(21)
    n, k = 48, 256
    bits = 8 if kind == "int8" else 4
    u = torch.randint(0, 2**bits, (n, k), generator=g, dtype=torch.uint8)
    scale = torch.rand(n, k // 32, generator=g) + 0.01
    zero = {"int4": torch.randn(n, k // 32, generator=g), "q4_0": -8 * scale.half().float(), "int8": None}[kind]
    qw = qgemm.pack(u, scale, zero, bits)
    bias = torch.randn(n, generator=g)
    x = torch.randn(9, k, generator=g)
    alone = torch.cat([qgemm.qgemm(x[i : i + 1], qw, bias) for i in range(9)])
    for rows in (2, 3, 4, 5, 9):
        assert torch.equal(qgemm.qgemm(x[:rows], qw, bias), alone[:rows])
