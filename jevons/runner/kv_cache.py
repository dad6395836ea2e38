"""Allocating the KV cache tensors and sizing them from a memory setting.

Without an explicit size (--kv-cache-bytes, --num-kv-blocks) the pool is sized
to the workload: max_num_seqs sequences of min(max_model_len,
CacheConfig.tokens_per_seq) tokens each, and never less than one sequence of
max_model_len (so a request without max_tokens fits), at the model's own bytes
per token; capped by CacheConfig.memory_fraction of the memory available and,
on a CPU, by CPU_DEFAULT_MAX_BYTES. A 135M model then holds what 64 chat turns
need (hundreds of MiB), not a fixed share of the machine."""
from __future__ import annotations

import functools
import logging
import math
import mmap

import torch

from jevons.config import CacheConfig

log = logging.getLogger("jevons")


def meminfo_available(text: str) -> int | None:
    """MemAvailable from the text of /proc/meminfo, in bytes."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            found = meminfo_available(f.read())
        if found is not None:
            return found
    except OSError:
        pass
    return 4 << 30


# On a CPU the cache shares RAM with everything else, and zeroing it touches
# every page: without an explicit size, never more than this.
CPU_DEFAULT_MAX_BYTES = 2 << 30


def default_cache_bytes(cfg: CacheConfig, bytes_per_token: int, max_num_seqs: int, max_model_len: int,
                        available: int, device_type: str) -> int:
    """The default pool size in bytes (the rule in this module's docstring)."""
    tokens = max(max_num_seqs * min(max_model_len, cfg.tokens_per_seq), max_model_len)
    budget = min(tokens * bytes_per_token, int(available * cfg.memory_fraction))
    if device_type == "cpu":
        budget = min(budget, CPU_DEFAULT_MAX_BYTES)
    return budget


def num_blocks_for(cfg: CacheConfig, bytes_per_block: int, device: torch.device, *,
                   max_num_seqs: int, max_model_len: int, available: int | None = None) -> int:
    if cfg.num_blocks is not None:
        return cfg.num_blocks
    if cfg.cache_bytes is not None:
        budget = cfg.cache_bytes
    else:
        if available is None:
            available = available_memory(device)
        per_token = -(-bytes_per_block // cfg.block_size)
        budget = default_cache_bytes(cfg, per_token, max_num_seqs, max_model_len, available, device.type)
    return max(1, budget // bytes_per_block)


def window_pool_blocks(retain: int, block_size: int, max_num_seqs: int, max_num_batched_tokens: int) -> int:
    """Blocks of a window pool (engine/window_blocks.py): every running
    sequence's last `retain` tokens plus its current block, one step's new
    tokens, and as much again for finished sequences' windows that a prefix
    hit may resume from."""
    per_seq = -(-retain // block_size) + 2
    return 2 * max_num_seqs * per_seq + -(-max_num_batched_tokens // block_size)


def allocate_kv_caches(
    spec: list[tuple[tuple[int, ...], tuple[int, ...]]],
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """spec: per layer, the per-token shape of the K and the V entry. All zeros."""
    zeros = lazy_zeros if device.type == "cpu" else functools.partial(torch.zeros, device=device)
    return [
        (
            zeros((num_blocks, block_size, *k_shape), dtype=dtype),
            zeros((num_blocks, block_size, *v_shape), dtype=dtype),
        )
        for k_shape, v_shape in spec
    ]


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor of zeros that costs nothing until used: an anonymous
    private mapping reads as zeros and the kernel hands out each page zeroed
    on its first touch. torch.zeros wrote the whole cache at start (the
    default 2 GiB: ~0.7 s on two cores, and all of it resident before the
    first request); here only the blocks a request reaches are ever touched.
    The tensor keeps the mapping alive (torch.frombuffer holds a reference)."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    mm = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(mm, dtype=torch.uint8).view(dtype).view(shape)
