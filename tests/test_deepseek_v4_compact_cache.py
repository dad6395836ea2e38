"""DeepSeek-V4's compact cache in the engine: the engine's blocks cost what
kv_cache_layout() says (compressed entries only), the window entries live in
a window pool released as sequences move on, and a prefix hit (which needs
the hit point's window blocks) gives the cold run's greedy tokens."""
import pytest
import torch

from conftest import assert_no_leaks
from deepseek_v4_tiny import build_deepseek_v4
from test_deepseek_parity import rand_seqs

GREEDY = dict(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_deepseek_v4(tmp_path_factory.mktemp("ds4-compact"))


def _llm(model, **kw):
    from jevons import LLM

    return LLM(str(model), dtype="float32", progress=False, **kw)


def _run(llm, prompts):
    from jevons import SamplingParams

    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(**GREEDY), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def test_engine_bytes_per_token_are_the_layouts(model):
    """Allocated main-pool bytes / tokens it holds = the layout's per-token
    bytes; every window tensor has the (small) window pool's block count."""
    llm = _llm(model)
    core = llm.engine
    runner = core.runner
    n_layers = len(runner.model.layers)
    main, window = runner.kv_caches[:n_layers], runner.kv_caches[n_layers:]
    bs = core.kv.block_size
    tokens = core.kv.num_blocks * bs
    allocated = sum(t.numel() * t.element_size() for pair in main for t in pair)
    layout = runner.model.kv_cache_layout(bs)
    per_token = sum(k[0] + v[0] for k, v in layout.main) * 4  # float32
    assert allocated == tokens * per_token == tokens * core.kv_bytes_per_token
    assert core.kv.window is not None
    lanes = core.kv.window.lanes
    assert len(lanes) == 2 and len(window) == 2 * n_layers  # the window lane, then CSA's short lane
    for lane, pairs in zip(lanes, (window[:n_layers], window[n_layers:])):
        assert all(t.shape[0] == lane.pool.num_blocks for pair in pairs for t in pair)
    assert [lane.spec.retain for lane in lanes] == [layout.retain, layout.short_retain]
    window_per_token = sum(k[0] + v[0] for k, v in layout.window + layout.short) * 4
    assert window_per_token > 5 * per_token  # what the window pool spares the main one
    llm.close() if hasattr(llm, "close") else None


def test_window_blocks_are_released_and_prefix_hit_equals_cold(model):
    vocab = 200
    base = rand_seqs(vocab, [70], seed=7)[0]
    longer = base + rand_seqs(vocab, [9], seed=8)[0]
    cold = _run(_llm(model, enable_prefix_caching=False), [longer])[0]
    llm = _llm(model, max_num_batched_tokens=16)
    first = _run(llm, [base])[0]
    hits_before = llm.engine.kv.prefix_hits
    # base + its answer + more: a hit at the end of the first request's blocks
    again = _run(llm, [longer])[0]
    assert again == cold
    assert llm.engine.kv.prefix_hits > hits_before
    assert first == _run(_llm(model, enable_prefix_caching=False), [base])[0]
    w = llm.engine.kv.window
    assert w.num_free == w.num_blocks  # every window block back (cached or free), in both lanes
    assert_no_leaks(llm)


def test_a_running_sequence_holds_only_its_window():
    from jevons.engine.window_blocks import WindowBlocks, WindowSpec

    w = WindowBlocks(WindowSpec(num_blocks=8, retain=7), block_size=4, enable_caching=True)
    hashes = [bytes([i]) for i in range(40)]
    assert w.ensure("r", 0, 4, hashes, 0)  # a 16-token prompt: 4 blocks
    w.cache("r", hashes, 4)
    for start in range(16, 40, 4):  # decode on: blocks before token start - 7 go back
        assert w.ensure("r", start, start // 4 + 1, hashes, 0)
        w.cache("r", hashes, start // 4)
        assert len(w.table_suffix("r", 0)) == start // 4 + 1 - w.first_needed(start)
    assert w.usable_hit(hashes, 9) == 9  # blocks 6..8 are still in the pool
    w.free("r")
    assert w.pool.num_free == 8
    assert w.usable_hit(hashes, 3) in (0, 3)


def test_two_lanes_keep_their_own_tails_and_fail_together():
    """CSA's inputs in a short lane (retain 3) beside the window lane (retain
    7): each lane holds blocks for its own tail, the table lists the window
    run then the short run (offset past the window pool), and a step one lane
    cannot serve takes nothing from the other."""
    from jevons.engine.window_blocks import WindowBlocks, WindowSpec

    w = WindowBlocks(WindowSpec(num_blocks=8, retain=7, short_blocks=3, short_retain=3), block_size=4,
                     enable_caching=True)
    hashes = [bytes([i]) for i in range(40)]
    assert not w.ensure("r", 0, 4, hashes, 0)  # a 16-token prompt needs 4 short blocks: there are 3
    assert w.num_free == 11 and w.table_suffix("r", 100) == []
    assert w.ensure("r", 0, 2, hashes, 0)  # an 8-token prompt
    w.cache("r", hashes, 2)
    for start in range(8, 40, 4):
        assert w.ensure("r", start, start // 4 + 1, hashes, 0)
        w.cache("r", hashes, start // 4)
        long, short = w.lanes
        ids = w.table_suffix("r", 100)
        n_long = start // 4 + 1 - long.first_needed(start)
        n_short = start // 4 + 1 - short.first_needed(start)
        assert (n_long, n_short) == (3, 2)  # tokens start-7.. and start-3.. of 4-token blocks
        assert all(100 <= i < 108 for i in ids[:n_long]) and all(108 <= i < 111 for i in ids[n_long:])
        assert len(ids) == n_long + n_short
    # A hit must be usable in both lanes (block 9 is not full, so never cached).
    assert w.usable_hit(hashes, 10) == 9
    w.free("r")
    assert w.num_free == w.num_blocks == 11
    assert w.usable_hit(hashes, 9) == 9  # both tails are still cached
    assert w.usable_hit(hashes, 6) < 6  # the 3-block short lane no longer has block 5's inputs
