"""Paged attention on the CPU: decode rows through the C kernel
(csrc/paged_attention.c), multi-token spans through the torch reference.

Same signature and result as kernels.torch_ref.paged_attention, which the
tests hold it to."""
from __future__ import annotations

import ctypes

import torch

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.kernels.cpu.build import load
from jevons.kernels.cpu.ffi import F, I, L, P, kernel
from jevons.kernels.torch_ref import paged_attention as ref

_ARGTYPES = (P, L, P, P, P, P, P, L, P, P, L, I, I, I, I, I, F, I)


def simd_path() -> str | None:
    """The vector path the built library runs: "avx512", "avx2" or "scalar"
    (the compiler's loops), or None without the library."""
    lib = load()
    if lib is None:
        return None
    fn = lib.jv_attention_simd
    fn.restype = ctypes.c_int
    return ("scalar", "avx2", "avx512")[fn()]


def _kernel(dtype: torch.dtype):
    return kernel("decode_attention", dtype, _ARGTYPES, ctypes.c_int)


def supports(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    return (
        q.device.type == "cpu" and q.dtype == k_cache.dtype and k_cache.is_contiguous()
        and _kernel(q.dtype) is not None
    )


def decode_attention(
    out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    meta: AttentionMetadata, scale: float,
) -> None:
    """Write out[t] for every decode token t = meta.decode_tokens[b]."""
    if q.stride(2) != 1 or q.stride(1) != q.shape[2]:
        q = q.contiguous()
    _, block_size, hkv, d = k_cache.shape
    # The C side reads these as dense int64 arrays (it trusts their values: the
    # scheduler's block tables and lengths).
    tokens, seqs, lens, bt = (
        t if t.dtype == torch.int64 and t.is_contiguous() else t.to(torch.int64).contiguous()
        for t in (meta.decode_tokens, meta.decode_seqs, meta.seq_lens, meta.block_tables)
    )
    rc = _kernel(q.dtype)(
        q.data_ptr(), q.stride(0), tokens.data_ptr(), seqs.data_ptr(),
        k_cache.data_ptr(), v_cache.data_ptr(), bt.data_ptr(), bt.stride(0), lens.data_ptr(),
        out.data_ptr(), out.stride(0), len(meta.decode_seqs), q.shape[1], hkv, d, block_size,
        scale, torch.get_num_threads(),
    )
    if rc != 0:
        raise MemoryError("decode attention could not allocate its scratch buffers")


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    meta: AttentionMetadata, scale: float,
) -> torch.Tensor:
    """q: [N, Hq, D]; k, v: this step's [N, Hkv, D], already written to the cache."""
    if not supports(q, k_cache) or k_cache.shape[-1] != v_cache.shape[-1]:
        return ref.paged_attention(q, k, v, k_cache, v_cache, meta, scale)
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
    if len(meta.decode_seqs):
        decode_attention(out, q, k_cache, v_cache, meta, scale)
    if meta.prefills:
        kf = k_cache.view(-1, *k_cache.shape[2:])
        vf = v_cache.view(-1, *v_cache.shape[2:])
        ref.attend_prefills(out, q, k, v, kf, vf, meta, scale)
    return out
