"""The CPU sparse MLA decode kernel (kernels/cpu/sparse_mla.py, csrc/sparse_mla.c)
against its plain-torch reference (kernels/torch_ref/sparse_mla.py): random
shapes (the AVX2 tiles and the compiler's loops), float32 and bfloat16, block
tables with holes, top-k shorter than the context, the dense fallback, and
the same result at every thread count and batch layout."""
import math

import pytest
import torch

from jevons.kernels.cpu import build
from jevons.kernels.cpu import sparse_mla as cpu
from jevons.kernels.torch_ref import sparse_mla as ref

pytestmark = pytest.mark.skipif(build.load() is None, reason="C kernels cannot be built here")

# (heads, Dn, Dr, R, Dv): the first three take the AVX2 tiles (C = R + Dr a
# multiple of 8, R of 16; 4 heads per tile, 6 leaves a remainder, 38 spans
# two work items of at most 32 heads), the last two the compiler's loops
# (R + Dr = 37; R = 24 not a multiple of 16).
SHAPES = [(4, 24, 16, 32, 20), (6, 16, 8, 64, 16), (38, 8, 8, 32, 8), (3, 7, 5, 32, 9), (5, 8, 8, 24, 8)]


def make_case(lens, k, heads, dn, dr, r, dv, dtype, block_size=4, seed=0):
    """A paged latent cache whose rows live in scattered blocks (holes between
    them: every other block id of a shuffled pool is never used), the decode
    rows' tables, and index-ordered positions: each row's first min(len, k)
    positions are a random subset of its context (k = None: dense, no positions)."""
    g = torch.Generator().manual_seed(seed)
    width = max(math.ceil(n / block_size) for n in lens)
    pool = torch.randperm(2 * len(lens) * width + 3, generator=g)
    kv = torch.randn(len(pool), block_size, r + dr, generator=g).to(dtype)
    tables = pool[: 2 * len(lens) * width : 2].view(len(lens), width)  # odd draws: the holes
    q_nope = torch.randn(len(lens), heads, dn, generator=g).to(dtype)
    q_rope = torch.randn(len(lens), heads, dr, generator=g).to(dtype)
    w = (torch.randn(heads, dn + dv, r, generator=g) / math.sqrt(r)).to(dtype)
    lens_t = torch.tensor(lens)
    if k is None:
        return q_nope, q_rope, kv, tables, None, lens_t, w
    positions = torch.zeros(len(lens), k, dtype=torch.int64)
    for b, n in enumerate(lens):
        pick = torch.randperm(n, generator=g)[:k].sort().values
        positions[b, : len(pick)] = pick
        positions[b, len(pick):] = torch.arange(n, n + k - len(pick)) % (width * block_size)  # masked padding
    return q_nope, q_rope, kv, tables, positions, torch.tensor([min(n, k) for n in lens]), w


def fp32_reference(q_nope, q_rope, kv, tables, positions, lens, w, scale):
    """The reference on the same values widened to float32."""
    return ref.sparse_mla_decode(q_nope.float(), q_rope.float(), kv.float(), tables, positions, lens, w.float(), scale)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lens,k", [
    ([40], 9),  # top-k far below the context
    ([1, 17, 64, 5], 16),  # rows under, at and over the top-k; a row seeing one token
    ([33, 2, 20], None),  # the dense fallback: each row over its whole context
    ([50, 18], 17),  # the top-k one more than a 16-entry chunk
])
def test_float32_matches_reference(shape, lens, k):
    args = make_case(lens, k, *shape, torch.float32)
    scale = 0.3
    want = ref.sparse_mla_decode(*args, scale)
    got = cpu.sparse_mla_decode(*args, scale)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[:2] + SHAPES[3:4])
@pytest.mark.parametrize("lens,k", [([1, 17, 64, 5], 16), ([33, 2, 20], None)])
def test_bfloat16_matches_reference(shape, lens, k):
    """Every sum is float32 in the kernel and only the output is rounded, so
    it is held to the float32 reference on the same bf16 values, within one
    bf16 rounding of the output (2^-8 relative); the bf16 reference, which
    rounds q_lat, the scores, p and o_lat on the way, is further off."""
    args = make_case(lens, k, *shape, torch.bfloat16, seed=1)
    scale = 0.3
    got = cpu.sparse_mla_decode(*args, scale)
    assert got.dtype == torch.bfloat16
    want = fp32_reference(*args, scale)
    torch.testing.assert_close(got.float(), want, rtol=2**-8, atol=2**-8 * want.abs().max().item())
    bf16_ref = ref.sparse_mla_decode(*args, scale).float()
    assert (got.float() - want).abs().max() <= (bf16_ref - want).abs().max() + 2**-8 * want.abs().max()


def test_real_shape_tiles():
    """V3.2's own head dims (R 512, Dr 64, Dn 128, Dv 128), 16 heads, top-k
    256 of a 1,000-token context."""
    args = make_case([1000, 300], 256, 16, 128, 64, 512, 128, torch.float32, block_size=64, seed=3)
    torch.testing.assert_close(cpu.sparse_mla_decode(*args, 0.07), ref.sparse_mla_decode(*args, 0.07),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_result_independent_of_threads_and_batch(dtype):
    """A row's output is bitwise the same alone or in a batch, at 1 or 2
    threads: a head's sums run in one order whatever the work split."""
    args = make_case([70, 12, 45], 20, 6, 16, 8, 64, 16, dtype, seed=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu.sparse_mla_decode(*args, 0.2)
        torch.set_num_threads(2)
        two = cpu.sparse_mla_decode(*args, 0.2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    q_nope, q_rope, kv, tables, positions, lens, w = args
    alone = cpu.sparse_mla_decode(q_nope[1:2], q_rope[1:2], kv, tables[1:2], positions[1:2], lens[1:2], w, 0.2)
    assert torch.equal(alone[0], two[1])


def test_unsupported_dtype_falls_back_to_reference():
    args = make_case([9, 4], 5, 4, 24, 16, 32, 20, torch.float64, seed=5)
    torch.testing.assert_close(cpu.sparse_mla_decode(*args, 0.5), ref.sparse_mla_decode(*args, 0.5))


def test_runs_the_vector_path_this_cpu_has():
    text = open("/proc/cpuinfo").read()
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    assert cpu.simd_path() == ("avx2" if {"avx2", "fma"} <= flags else "scalar")


def test_cpu_backend_routes_sparse_decode_to_the_kernel():
    from jevons.kernels.registry import get_ops

    assert get_ops("cpu").sparse_mla_decode is cpu.sparse_mla_decode
    assert get_ops("torch").sparse_mla_decode is ref.sparse_mla_decode


# --- the lightning indexer's decode scores (kernels/cpu/dsa_index.py) -------------------------------------------

def index_case(lens, heads, di, dtype, fp8, block_size=4, seed=0):
    """Indexer keys (in `dtype`, or FP8 entries in a `dtype` tensor) in
    scattered blocks with holes, and each decode row's table."""
    from jevons.kernels.torch_ref.index_keys import FP8Keys
    from jevons.kernels.torch_ref.sparse_mla import write_index_keys

    g = torch.Generator().manual_seed(seed)
    width = max(math.ceil(n / block_size) for n in lens)
    pool = torch.randperm(2 * len(lens) * width + 3, generator=g)
    tables = pool[: 2 * len(lens) * width : 2].view(len(lens), width)
    fmt = FP8Keys(di, pow2_scales=True) if fp8 else None
    entry = fmt.entry_elems(dtype) if fp8 else di
    cache = torch.zeros(len(pool), block_size, entry, dtype=dtype)
    keys = torch.randn(len(pool) * block_size, di, generator=g) * (1 + 3 * torch.rand(di, generator=g))
    write_index_keys(cache, keys, torch.arange(len(pool) * block_size), fmt)
    q = torch.randn(len(lens), heads, di, generator=g).to(dtype)
    w = torch.randn(len(lens), heads, generator=g) * heads**-0.5
    return q, w, cache, tables, torch.tensor(lens), fmt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("heads,di", [(16, 32), (6, 128), (5, 24), (64, 256)])
def test_index_scores_match_reference(dtype, fp8, heads, di):
    """Scores of every visible key (rows of 1 to 600 tokens, more than one
    256-key work item), float32 sums in another order than torch's: equal to
    float rounding. Past a row's length the kernel writes 0."""
    from jevons.kernels.cpu import dsa_index
    from jevons.kernels.torch_ref.sparse_mla import index_scores_decode

    if fp8 and di % 32:
        pytest.skip("FP8 keys come in whole scale blocks")
    lens = [1, 600, 37, 256]
    q, w, cache, tables, lens_t, fmt = index_case(lens, heads, di, dtype, fp8)
    want = index_scores_decode(q, w, cache, tables, lens_t, di**-0.5, fmt)
    got = dsa_index.index_scores_decode(q, w, cache, tables, lens_t, di**-0.5, fmt)
    assert got.shape == want.shape == (4, 600) and got.dtype == torch.float32
    for b, n in enumerate(lens):
        torch.testing.assert_close(got[b, :n], want[b, :n], rtol=1e-5, atol=1e-5)
        assert (got[b, n:] == 0).all()


def test_index_scores_independent_of_threads_and_batch():
    from jevons.kernels.cpu import dsa_index

    q, w, cache, tables, lens, fmt = index_case([300, 41, 530], 12, 64, torch.bfloat16, True, seed=6)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = dsa_index.index_scores_decode(q, w, cache, tables, lens, 0.1, fmt)
        torch.set_num_threads(2)
        two = dsa_index.index_scores_decode(q, w, cache, tables, lens, 0.1, fmt)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    alone = dsa_index.index_scores_decode(q[1:2], w[1:2], cache, tables[1:2], lens[1:2], 0.1, fmt)
    assert torch.equal(alone[0], two[1, :41])


def test_cpu_backend_routes_index_scores_to_the_kernel():
    from jevons.kernels.cpu import dsa_index
    from jevons.kernels.registry import get_ops

    assert get_ops("cpu").index_scores_decode is dsa_index.index_scores_decode
    assert get_ops("torch").index_scores_decode is ref.index_scores_decode


def test_fp8_keys_decode_exactly_every_byte():
    """Every e4m3 value (NaN aside), subnormals included, as torch decodes it:
    row i scores key s with q = +-e_i, so its score is relu(+-k_s[i])."""
    from jevons.kernels.cpu import dsa_index
    from jevons.kernels.torch_ref.index_keys import FP8Keys

    fmt = FP8Keys(128)
    raw = torch.arange(256, dtype=torch.uint8)
    raw[0x7F], raw[0xFF] = 0x7E, 0xFE  # e4m3fn's NaNs
    cache = torch.zeros(1, 2, fmt.entry_elems(torch.float32), dtype=torch.float32)
    entries = cache.view(2, -1).view(torch.uint8)
    entries[:, :128] = raw.view(2, 128)
    entries[:, 128:132] = torch.tensor([1.0]).view(torch.uint8)
    want = raw.view(torch.float8_e4m3fn).float().view(2, 128)
    eye = torch.eye(128)
    for sign in (1.0, -1.0):
        q = (sign * eye)[:, None]  # [128 rows, 1 head, 128]
        got = dsa_index.index_scores_decode(q, torch.ones(128, 1), cache, torch.zeros(128, 1, dtype=torch.int64),
                                            torch.full((128,), 2), 1.0, fmt)
        assert torch.equal(got.T, (sign * want).clamp_min(0))


def test_the_portable_build_matches_the_reference(tmp_path, monkeypatch):
    """sparse_mla.c and dsa_index.c built for a CPU without AVX2
    (-march=x86-64-v2: the compiler's loops, the e4m3 table) give the
    reference's results too."""
    import ctypes
    import subprocess

    from jevons.kernels.cpu import dsa_index
    from jevons.kernels.torch_ref.sparse_mla import index_scores_decode

    cc = build._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    flags = [f for f in build.FLAGS if not f.startswith("-march")]
    target = tmp_path / "sparse_portable.so"
    sources = [str(build.CSRC / name) for name in ("sparse_mla.c", "dsa_index.c")]
    done = subprocess.run([cc, *flags, "-march=x86-64-v2", "-o", str(target), *sources, "-lmvec", "-lm"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lib = ctypes.CDLL(str(target))
    simd = lib.jv_sparse_mla_simd
    simd.restype = ctypes.c_int
    assert simd() == 0

    def decode_fn(dtype):
        suffix = {torch.float32: "f32", torch.bfloat16: "bf16"}[dtype]
        fn = getattr(lib, f"jv_sparse_mla_decode_{suffix}")
        fn.argtypes, fn.restype = list(cpu._ARGTYPES), ctypes.c_int
        return fn

    scores_fn = lib.jv_index_scores
    scores_fn.argtypes, scores_fn.restype = dsa_index._kernel().argtypes, ctypes.c_int
    monkeypatch.setattr(cpu, "_kernel", decode_fn)
    monkeypatch.setattr(dsa_index, "_kernel", lambda: scores_fn)
    for dtype in (torch.float32, torch.bfloat16):
        args = make_case([1, 17, 64, 5], 16, 6, 16, 8, 64, 16, dtype, seed=7)
        got = cpu.sparse_mla_decode(*args, 0.3).float()
        torch.testing.assert_close(got, fp32_reference(*args, 0.3), rtol=2**-8, atol=2**-8)
        q, w, cache, tables, lens, fmt = index_case([1, 300, 37], 12, 64, dtype, dtype == torch.bfloat16)
        want = index_scores_decode(q, w, cache, tables, lens, 0.125, fmt)
        got = dsa_index.index_scores_decode(q, w, cache, tables, lens, 0.125, fmt)
        for b, n in enumerate([1, 300, 37]):
            torch.testing.assert_close(got[b, :n], want[b, :n], rtol=1e-5, atol=1e-5)
