"""The prefix cache's parts below the device pool, one at a time: block
payload copies (GQA and MLA layouts), the host LRU, the disk file format and
the disk tier's bound, restart scan and corruption handling."""
import hashlib
import os

import pytest
import torch

from jevons.config import ModelConfig, parse_bytes
from jevons.engine.block_pool import BlockPool
from jevons.runner.cache_fingerprint import cache_fingerprint
from jevons.engine.cache_tiers.disk_cache import DiskCache
from jevons.engine.cache_tiers.disk_format import HEADER_SIZE, pack_header, verify
from jevons.engine.cache_tiers.host_cache import HostCache
from jevons.engine.cache_tiers.kv_transfer import BlockTransfer
from jevons.runner.kv_cache import allocate_kv_caches

FP = hashlib.sha256(b"model").digest()


def key(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()


def payload(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec,dtype", [
    ([((2, 16), (2, 16))] * 3, torch.float32),  # GQA: K and V per layer
    ([((48,), (0,))] * 2, torch.bfloat16),  # MLA: latent only, empty V
])
def test_transfer_round_trip(spec, dtype):
    caches = allocate_kv_caches(spec, 6, 4, dtype, torch.device("cpu"))
    for k, v in caches:
        k.normal_()
        v.normal_()
    t = BlockTransfer(caches)
    assert t.payload_bytes == sum(k[0].numel() * k.element_size() + v[0].numel() * v.element_size() for k, v in caches)
    saved = t.read([1, 4])
    before = [(k.clone(), v.clone()) for k, v in caches]
    t.write(0, saved[0])  # blocks 1, 4 -> 0, 5
    t.write(5, saved[1])
    for (k, v), (k0, v0) in zip(caches, before):
        assert torch.equal(k[0], k0[1]) and torch.equal(k[5], k0[4]) and torch.equal(v[0], v0[1])
        assert torch.equal(k[1:5], k0[1:5])  # nothing else touched
    # The scatter-read buffers are the cache's own memory, in payload order.
    views = t.block_views(2)
    assert sum(v.nbytes for v in views) == t.payload_bytes
    torch.frombuffer(views[0], dtype=torch.uint8).fill_(0)
    assert not caches[0][0][2].any() and caches[0][0][3].any()
    with pytest.raises(ValueError):
        t.write(0, torch.zeros(3, dtype=torch.uint8))


def test_pool_reports_evictions_of_cached_blocks_only():
    pool = BlockPool(3)
    seen = []
    pool.on_evict = lambda b: seen.append((b.block_id, b.block_hash))
    a, b, c = pool.allocate(3)
    assert pool.cache_block(a, key(1)) and not pool.cache_block(b, key(1))  # b duplicates a
    pool.free([c, b, a])
    pool.allocate(3)
    assert seen == [(a.block_id, key(1))]  # the duplicate b goes silently


def test_host_cache_lru_by_bytes():
    host = HostCache(250)
    for i in range(3):
        host.put(key(i), payload(100, i))
    assert key(0) not in host and host.bytes_used == 200 and host.evictions == 1
    host.get(key(1))  # now most recent
    host.put(key(3), payload(100, 3))
    assert key(1) in host and key(2) not in host
    host.put(key(9), payload(300, 9))  # bigger than the whole tier: ignored
    assert key(9) not in host


def test_disk_format_detects_every_kind_of_damage():
    p = payload(1000, 0)
    good = pack_header(FP, key(1), memoryview(p.numpy())) + p.numpy().tobytes()
    assert len(good) == HEADER_SIZE + 1000
    assert verify(memoryview(good), FP, key(1), 1000) is None
    for pos in (0, 9, 20, 30, 60, 90, HEADER_SIZE, HEADER_SIZE + 500, len(good) - 1):
        bad = bytearray(good)
        bad[pos] ^= 0x01
        assert verify(memoryview(bad), FP, key(1), 1000) is not None, pos
    assert verify(memoryview(good[:-1]), FP, key(1), 1000) is not None  # truncated
    assert verify(memoryview(good), key(7), key(1), 1000) is not None  # another model
    assert verify(memoryview(good), FP, key(2), 1000) is not None  # renamed to another key


def test_disk_cache_bound_restart_and_corruption(tmp_path):
    n = 4096
    d = DiskCache(tmp_path, FP, n, max_bytes=5 * (n + HEADER_SIZE))
    for i in range(8):
        assert d.put(key(i), payload(n, i))
    assert d.get(key(7)) is not None  # readable from the write buffer at once
    d.flush()
    files = sorted(d.dir.glob("*.kv"))
    assert len(files) == 5 and sum(f.stat().st_size for f in files) <= d.max_bytes
    assert d.evictions == 3 and key(0) not in d and key(7) in d
    assert torch.equal(d.get(key(5)), payload(n, 5))
    d.close()

    # A restart rebuilds the index from the folder; a stray and a short file go.
    (d.dir / "notes.txt").write_text("not a block")
    os.truncate(d.path(key(4)), 100)
    d2 = DiskCache(tmp_path, FP, n, max_bytes=5 * (n + HEADER_SIZE))
    assert d2.num_files == 4 and d2.corrupt == 1 and not d2.path(key(4)).exists()
    assert torch.equal(d2.get(key(6)), payload(n, 6))
    # A flipped payload byte: a miss, the file is deleted, nothing raises.
    with open(d2.path(key(7)), "r+b") as f:
        f.seek(HEADER_SIZE + 123)
        b = f.read(1)
        f.seek(HEADER_SIZE + 123)
        f.write(bytes([b[0] ^ 0xFF]))
    assert d2.get(key(7)) is None and d2.corrupt == 2 and not d2.path(key(7)).exists()
    # A file deleted behind its back: a plain miss.
    d2.path(key(6)).unlink()
    assert d2.get(key(6)) is None
    # Another fingerprint lives in its own folder and sees none of these.
    other = DiskCache(tmp_path, key(99), n, max_bytes=10**6)
    assert other.num_files == 0 and other.get(key(5)) is None
    d2.close()
    other.close()


def test_disk_cache_drops_writes_beyond_its_buffer(tmp_path):
    d = DiskCache(tmp_path, FP, 1000, max_bytes=10**6, max_pending_bytes=0)
    assert not d.put(key(1), payload(1000, 1)) and d.dropped == 1
    d.close()
    closed = DiskCache(tmp_path, FP, 1000, max_bytes=10**6)
    closed.close()
    assert not closed.put(key(2), payload(1000, 2))  # nothing queues behind a stopped writer


def test_fingerprint_separates_configurations(tmp_path, tiny_llama):
    import json

    cfg = ModelConfig.from_hf(json.loads((tiny_llama / "config.json").read_text()))
    caches = allocate_kv_caches([((2, 16), (2, 16))] * 2, 2, 16, torch.float32, torch.device("cpu"))
    base = cache_fingerprint(tiny_llama, cfg, torch.float32, 16, caches)
    assert base == cache_fingerprint(tiny_llama, cfg, torch.float32, 16, caches)
    assert base != cache_fingerprint(tiny_llama, cfg, torch.bfloat16, 16, caches)
    assert base != cache_fingerprint(tiny_llama, cfg, torch.float32, 8, caches)
    mla = allocate_kv_caches([((48,), (0,))] * 2, 2, 16, torch.float32, torch.device("cpu"))
    assert base != cache_fingerprint(tiny_llama, cfg, torch.float32, 16, mla)
    assert base != cache_fingerprint(tmp_path, cfg, torch.float32, 16, caches)
    # The same file served at other weights, or in other kernels, computes other KV.
    assert base != cache_fingerprint(tiny_llama, cfg, torch.float32, 16, caches, quantization="int4")
    assert base != cache_fingerprint(tiny_llama, cfg, torch.float32, 16, caches, deterministic=True)
    # The pool size is not part of it: a restart with another pool still hits.
    more = allocate_kv_caches([((2, 16), (2, 16))] * 2, 9, 16, torch.float32, torch.device("cpu"))
    assert base == cache_fingerprint(tiny_llama, cfg, torch.float32, 16, more)


def test_parse_bytes():
    assert parse_bytes("2e9") == 2 * 10**9 and parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("4G") == 4 * 10**9 and parse_bytes(1000) == 1000 and parse_bytes("0") == 0
    with pytest.raises(ValueError):
        parse_bytes("lots")
