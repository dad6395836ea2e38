"""DeepSeek-V3.2's lightning indexer scores for decode rows on the CPU
(csrc/dsa_index.c), the cached keys (float32, bf16 or FP8) read in place
through the block table. Same signature and result as
kernels.torch_ref.sparse_mla.index_scores_decode, which the tests hold it to;
other devices or dtypes go to that reference."""
from __future__ import annotations

import ctypes
import functools

import torch

from jevons.kernels.cpu.build import load
from jevons.kernels.cpu.ffi import F, I, L, P
from jevons.kernels.torch_ref import sparse_mla as ref
from jevons.kernels.torch_ref.index_keys import FP8Keys

_FORMATS = {torch.float32: 0, torch.bfloat16: 1}
_FP8 = 2


@functools.cache
def _kernel():
    lib = load()
    if lib is None:
        return None
    fn = lib.jv_index_scores
    fn.argtypes = [P, P, P, I, L, P, L, P, P, L, I, I, I, I, I, F, I]
    fn.restype = ctypes.c_int
    return fn


def index_scores_decode(
    q: torch.Tensor, w: torch.Tensor, key_cache: torch.Tensor, block_tables: torch.Tensor, lens: torch.Tensor,
    scale: float, fp8: FP8Keys | None = None,
) -> torch.Tensor:
    """q [B, Hi, Di], w [B, Hi]; key_cache [blocks, block_size, entry];
    block_tables [B, W] (row b: decode row b's table); lens [B]. Returns
    float32 [B, max(lens)] scores (past lens[b]: 0, masked by the caller)."""
    fn = _kernel()
    fmt = _FP8 if fp8 is not None else _FORMATS.get(key_cache.dtype)
    if fn is None or fmt is None or q.device.type != "cpu" or not key_cache.is_contiguous():
        return ref.index_scores_decode(q, w, key_cache, block_tables, lens, scale, fp8)
    b, h, di = q.shape
    q, w = q.float().contiguous(), w.float().contiguous()
    tables = block_tables.to(torch.int64).contiguous()
    lens = lens.to(torch.int64).contiguous()
    out = torch.empty(b, int(lens.max()), dtype=torch.float32)
    entry_bytes = key_cache.shape[-1] * key_cache.element_size()
    rc = fn(
        q.data_ptr(), w.data_ptr(), key_cache.data_ptr(), fmt, entry_bytes, tables.data_ptr(), tables.stride(0),
        lens.data_ptr(), out.data_ptr(), out.stride(0), b, h, di, key_cache.shape[1],
        fp8.dims_per_scale if fp8 is not None else 0, scale, torch.get_num_threads(),
    )
    if rc != 0:
        raise MemoryError("index scores could not allocate their scratch buffers")
    return out
