"""The default KV cache is sized to the model and max_num_seqs, capped by a
fraction of free memory; explicit sizes win."""
from __future__ import annotations

import torch

from jevons.config import CacheConfig
from jevons.cost.model_stats import model_stats
from jevons.loader.presets import get_preset
from jevons.runner.kv_cache import CPU_DEFAULT_MAX_BYTES, default_cache_bytes, meminfo_available, num_blocks_for

GiB = 2**30
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def smollm2_bytes_per_token(dtype_bytes: int) -> int:
    return int(model_stats(get_preset("smollm2-135m-instruct")).kv_bytes_per_token(dtype_bytes))


def test_small_model_default_is_what_its_sequences_need():
    per_token = smollm2_bytes_per_token(4)  # float32: 30 layers x K and V x 3 heads x 64 x 4 B
    assert per_token == 46080
    got = default_cache_bytes(CacheConfig(), per_token, max_num_seqs=64, max_model_len=8192,
                              available=64 * GiB, device_type="cpu")
    assert got == 64 * 512 * per_token  # 64 sequences x 512 tokens, 1.4 GiB, not a share of 64 GiB
    assert got < 1.5 * GiB
    # bf16 halves it; fewer sequences, less cache
    assert default_cache_bytes(CacheConfig(), per_token // 2, 64, 8192, 64 * GiB, "cpu") == got // 2
    assert default_cache_bytes(CacheConfig(), per_token, 4, 8192, 64 * GiB, "cuda") == 8192 * per_token


def test_at_least_one_full_length_sequence_and_short_contexts():
    per_token = 1000
    # one sequence of max_model_len beats max_num_seqs x 512 when that is smaller
    assert default_cache_bytes(CacheConfig(), per_token, 2, 100_000, 10**12, "cuda") == 100_000 * per_token
    # a context shorter than the allowance: max_num_seqs full sequences
    assert default_cache_bytes(CacheConfig(), per_token, 8, 256, 10**12, "cuda") == 8 * 256 * per_token
    assert default_cache_bytes(CacheConfig(tokens_per_seq=64), per_token, 8, 256, 10**12, "cuda") == 8 * 64 * per_token
    assert default_cache_bytes(CacheConfig(tokens_per_seq=16), per_token, 8, 256, 10**12, "cuda") == 256 * per_token


def test_capped_by_memory():
    per_token = 1000
    assert default_cache_bytes(CacheConfig(), per_token, 64, 8192, 8 * 10**6, "cuda") == 2 * 10**6  # 25 %
    assert default_cache_bytes(CacheConfig(memory_fraction=0.5), per_token, 64, 8192, 8 * 10**6, "cuda") == 4 * 10**6
    big = default_cache_bytes(CacheConfig(), 10**6, 64, 8192, 10**15, "cpu")
    assert big == CPU_DEFAULT_MAX_BYTES


def test_num_blocks_explicit_sizes_win():
    per_block = 16 * 1000
    assert num_blocks_for(CacheConfig(num_blocks=7), per_block, CPU, max_num_seqs=64, max_model_len=8192) == 7
    assert num_blocks_for(CacheConfig(cache_bytes=10 * per_block), per_block, CPU, max_num_seqs=64,
                          max_model_len=8192) == 10
    # default: 64 x 512 tokens = 2048 blocks of 16, given plenty of memory (no CUDA needed: injected)
    assert num_blocks_for(CacheConfig(), per_block, CUDA, max_num_seqs=64, max_model_len=8192,
                          available=10**12) == 2048


def test_meminfo_available():
    text = "MemTotal:       32768000 kB\nMemFree:  1000 kB\nMemAvailable:   21283108 kB\n"
    assert meminfo_available(text) == 21283108 * 1024
    assert meminfo_available("MemTotal: 1 kB\n") is None
