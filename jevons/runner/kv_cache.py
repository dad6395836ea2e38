"""Allocating the KV cache tensors and sizing them from a memory setting."""
from __future__ import annotations

import logging

import torch

from jevons.config import CacheConfig

log = logging.getLogger("jevons")


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


# On a CPU the cache shares RAM with everything else, and zeroing it touches
# every page: without an explicit size, take a fraction of free memory but at
# most this much (tens of thousands of tokens for small models).
CPU_DEFAULT_MAX_BYTES = 2 << 30


def num_blocks_for(cfg: CacheConfig, bytes_per_block: int, device: torch.device) -> int:
    if cfg.num_blocks is not None:
        return cfg.num_blocks
    if cfg.cache_bytes is not None:
        budget = cfg.cache_bytes
    else:
        budget = int(available_memory(device) * cfg.memory_fraction)
        if device.type == "cpu":
            budget = min(budget, CPU_DEFAULT_MAX_BYTES)
    return max(1, budget // bytes_per_block)


def allocate_kv_caches(
    spec: list[tuple[tuple[int, ...], tuple[int, ...]]],
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """spec: per layer, the per-token shape of the K and the V entry."""
    return [
        (
            torch.zeros((num_blocks, block_size, *k_shape), dtype=dtype, device=device),
            torch.zeros((num_blocks, block_size, *v_shape), dtype=dtype, device=device),
        )
        for k_shape, v_shape in spec
    ]
