"""Decode CUDA graphs: the bucketing and static-buffer logic, on CPU. The
runner's eager mode runs the exact graph body (padded static buffers), so
comparing it with a plain forward checks everything but the capture itself."""
from __future__ import annotations

import pytest
import torch

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.models.forward_context import ForwardContext
from jevons.runner.cuda_graphs import DecodeGraphRunner, decode_buckets, pad_rows, pick_bucket


@pytest.mark.parametrize("max_batch", [1, 3, 8, 9, 100, 256])
def test_triton_graph_buckets_cover_every_batch(max_batch):
    buckets = decode_buckets(max_batch)
    assert buckets == sorted(set(buckets)) and buckets[0] == 1 and buckets[-1] >= max_batch
    for n in range(1, max_batch + 1):
        b = pick_bucket(n, buckets)
        assert b is not None and b >= n
        assert b - n < 16  # never more than 15 padded rows
        assert all(c < n for c in buckets if c < b)  # the smallest that fits
    assert pick_bucket(buckets[-1] + 1, buckets) is None
    assert pick_bucket(0, buckets) is None


def test_triton_graph_pad_rows_repeats_last():
    x = torch.tensor([[1, 2], [3, 4]])
    assert pad_rows(x, 4).tolist() == [[1, 2], [3, 4], [3, 4], [3, 4]]
    assert pad_rows(x, 2) is x


def test_triton_graph_can_run_only_pure_decode():
    runner = DecodeGraphRunner(lambda *a: None, [], 4, max_batch=4, max_blocks_per_seq=3, device="cpu")
    tables = torch.tensor([[0, 1], [2, 3]])
    assert runner.can_run(AttentionMetadata.build([1, 1], [3, 5], tables, 4))
    assert not runner.can_run(AttentionMetadata.build([1, 2], [3, 5], tables, 4))  # a prefill chunk
    wide = torch.arange(8).view(2, 4)
    assert not runner.can_run(AttentionMetadata.build([1, 1], [3, 13], wide, 4))  # wider than the buffers
    many = torch.arange(5).view(5, 1)
    assert not runner.can_run(AttentionMetadata.build([1] * 5, [1] * 5, many, 4))  # beyond the last bucket


def test_triton_graph_eager_replay_matches_forward(tiny_llama):
    """Prefill three requests, then one decode step both ways: plain forward,
    and through the padded static buffers (bucket 4 for 3 rows)."""
    from jevons import LLM

    llm = LLM(str(tiny_llama), dtype="float32", progress=False, enable_prefix_caching=False, block_size=4)
    runner = llm.engine.runner
    model, caches, bs = runner.model, runner.kv_caches, runner.block_size
    lens = [5, 8, 13]  # the decode token of the second lands on a block boundary
    assert bs == 4
    tables = torch.tensor([[1, 2, 0, 0], [3, 4, 5, 0], [6, 7, 8, 9]])  # 6, 9 and 14 tokens after the step
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for b, n in enumerate(lens):  # fill the cache with each prompt
            ids = torch.randint(3, 300, (n,), generator=g)
            meta = AttentionMetadata.build([n], [0], tables[b : b + 1], bs)
            model(ids, torch.arange(n), ForwardContext(meta, caches))
        ids = torch.randint(3, 300, (3,), generator=g)
        positions = torch.tensor(lens)
        meta = AttentionMetadata.build([1, 1, 1], lens, tables, bs)
        want = model(ids, positions, ForwardContext(meta, caches)).clone()
        graphs = DecodeGraphRunner(model, caches, bs, max_batch=8, max_blocks_per_seq=6, device="cpu")
        assert graphs.can_run(meta) and not graphs.use_graphs
        got = graphs.run(ids, positions, meta)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
