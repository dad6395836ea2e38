"""The C packer (kernels/cpu/gguf_pack.py) writes exactly the blob qgemm.pack
makes from the levels loader/gguf_quant.py reads out of the same blocks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from jevons.kernels.cpu import gguf_pack, qgemm
from jevons.loader.gguf_quant import levels_from_blocks

needs_kernel = pytest.mark.skipif(not gguf_pack.available(), reason="needs the C kernel library")


def _blocks(kind: Q, n: int, k: int, seed: int) -> np.ndarray:
    """Random blocks whose half scales cover normal, subnormal, zero and
    negative values (every rounding case of the scale products)."""
    elems, nbytes, _ = gguf_pack.KINDS[int(kind)]
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, (n * (k // elems), nbytes), dtype=np.uint8)
    halves = rng.choice([rng.uniform(1e-3, 0.1), 3e-6, 0.0, -0.0, -0.02, 7.5e-5, 1000.0], size=(len(b), 2))
    halves[:, 0] = np.where(rng.random(len(b)) < 0.5, rng.uniform(-0.1, 0.1, len(b)), halves[:, 0])
    h = halves.astype(np.float16).view(np.uint8).reshape(len(b), 4)
    if kind in (Q.Q4_0, Q.Q8_0):
        b[:, 0:2] = h[:, 0:2]
    else:  # Q4_1 (d, m) and Q4_K (d, dmin)
        b[:, 0:4] = h
    return b.reshape(n, -1)


def _reference(raw: np.ndarray, kind: Q, n: int, k: int, rows: torch.Tensor | None) -> qgemm.QWeight:
    lv = levels_from_blocks(raw, kind, (n, k))
    if rows is not None:
        lv = lv.rows(rows)
    zero = None if lv.bits == 8 and not lv.zero.any() else lv.zero
    return qgemm.pack(lv.u, lv.scale, zero, lv.bits)


@needs_kernel
@pytest.mark.parametrize("kind", [Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K], ids=lambda k: k.name)
@pytest.mark.parametrize("permuted", [False, True])
def test_blocks_pack_to_the_levels_blob(kind: Q, permuted: bool) -> None:
    n, k = 48, 512
    raw = _blocks(kind, n, k, seed=int(kind))
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(1)) if permuted else None
    got, want = gguf_pack.pack_blocks(raw, int(kind), n, k, rows), _reference(raw, kind, n, k, rows)
    assert (got.n, got.k, got.bits) == (want.n, want.k, want.bits)
    assert got.has_zero == want.has_zero
    assert torch.equal(got.blob, want.blob.view(got.blob.shape))


@needs_kernel
def test_shapes_it_does_not_take_are_refused() -> None:
    raw = _blocks(Q.Q4_0, 24, 64, seed=0)
    assert not gguf_pack.fits(int(Q.Q4_0), 24, 64) and not gguf_pack.fits(int(Q.Q6_K), 32, 256)
    with pytest.raises(ValueError):
        gguf_pack.pack_blocks(raw, int(Q.Q4_0), 24, 64)


@needs_kernel
@pytest.mark.parametrize("kind", [Q.Q4_0, Q.Q4_K, Q.Q8_0], ids=lambda k: k.name)
def test_parts_packed_into_slices_of_one_blob(kind: Q) -> None:
    """out=: a fused layer's parts written into their tiles of one blob equal
    the parts packed alone and joined (what runner/direct_load.py relies on)."""
    k = 512
    parts = [(_blocks(kind, n, k, seed=n), n) for n in (32, 16, 48)]
    alone = [gguf_pack.pack_blocks(raw, int(kind), n, k) for raw, n in parts]
    blob = torch.full((sum(n for _, n in parts) // qgemm.TILE, *alone[0].blob.shape[1:]), 0xAB, dtype=torch.uint8)
    t = 0
    for raw, n in parts:
        gguf_pack.pack_blocks(raw, int(kind), n, k, out=blob[t:t + n // qgemm.TILE])
        t += n // qgemm.TILE
    assert torch.equal(blob, torch.cat([q.blob for q in alone]))
    with pytest.raises(ValueError):
        gguf_pack.pack_blocks(parts[0][0], int(kind), 32, k, out=blob[:1])


@needs_kernel
@pytest.mark.parametrize("kind", [Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K], ids=lambda k: k.name)
def test_threads_do_not_change_the_bytes(kind: Q) -> None:
    """The packer splits tiles across OpenMP threads: any count, same blob."""
    n, k = 80, 512
    raw = _blocks(kind, n, k, seed=3)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(4))
    old = torch.get_num_threads()
    try:
        blobs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            blobs.append(gguf_pack.pack_blocks(raw, int(kind), n, k, rows).blob)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(blobs[0], blobs[1]) and torch.equal(blobs[0], blobs[2])
