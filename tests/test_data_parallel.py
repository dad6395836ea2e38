"""Data parallelism: two engine replicas of the tiny Llama behind one
DataParallelEngine. A repeated long prefix goes to the replica that cached it
(and hits there); concurrent unrelated prompts spread over both; answers equal
one engine's; a replica that dies fails its own requests and the other keeps
serving. The router's policy is also checked on its own."""
from __future__ import annotations

import asyncio
import json

import pytest
import torch

from jevons import LLM, SamplingParams
from jevons.config import engine_config
from jevons.engine.async_engine import AsyncEngine
from jevons.engine.dp_engine import DataParallelEngine
from jevons.engine.dp_router import PrefixAffinityRouter
from jevons.engine.engine_core import EngineCore
from jevons.errors import EngineDeadError

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts(tiny_llama):
    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(2)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in [64, 40, 23, 57]]


@pytest.fixture()
def dp(tiny_llama):
    cfg = engine_config(model=str(tiny_llama), dtype="float32")
    engine = DataParallelEngine([AsyncEngine(EngineCore(cfg, progress=False)) for _ in range(2)])
    yield engine
    engine.shutdown()


async def run(engine, rid, ids, params=GREEDY):
    tokens, cached = [], 0
    async for ev in engine.generate(rid, ids, params):
        cached = max(cached, ev.num_cached_tokens)
        for d in ev.deltas:
            tokens += d.token_ids
    return tokens, cached


def test_router_prefers_the_replica_with_the_prefix_within_a_load_bound():
    r = PrefixAffinityRouter(2, block_size=4, balance_slack=1)
    a = list(range(20))
    assert r.pick(a, [True, True]) == 0  # nothing cached anywhere: the least loaded (ties: the first)
    assert r.pick(list(range(100, 120)), [True, True]) == 1  # unrelated: the other, less loaded
    assert r.pick(a[:12] + [7, 7, 7, 7], [True, True]) == 0  # shares 3 blocks with replica 0's prompt
    assert r.load == [2, 1]
    assert r.pick(a, [True, True]) == 0  # load 2 vs 1: within the slack
    assert r.pick(a, [True, True]) == 1  # load 3 vs 1: too busy, the prefix is not worth the wait
    r.done(0), r.done(0), r.done(0)
    assert r.pick(a, [False, True]) == 1  # a dead replica gets nothing
    with pytest.raises(RuntimeError, match="no data-parallel replica is alive"):
        r.pick(a, [False, False])


def test_prefix_affinity_spread_and_same_answers(dp, prompts, tiny_llama):
    ref = LLM(str(tiny_llama), dtype="float32", progress=False).generate(
        [{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)

    async def main():
        # Two unrelated prompts at once land on different replicas.
        both = await asyncio.gather(run(dp, "a", prompts[0]), run(dp, "b", prompts[1]))
        spread = [e.core.num_steps > 0 for e in dp.engines]
        # The first prompt's prefix again (plus a new tail): the replica that holds it.
        follow = prompts[0][:48] + prompts[2][:5]
        steps = [e.core.num_steps for e in dp.engines]
        tokens, cached = await run(dp, "c", follow)
        went = [e.core.num_steps > s for e, s in zip(dp.engines, steps)]
        rest = await asyncio.gather(run(dp, "d", prompts[2]), run(dp, "e", prompts[3]))
        return both, spread, cached, went, rest

    both, spread, cached, went, rest = asyncio.run(main())
    assert spread == [True, True]
    assert cached == 48 and went.count(True) == 1  # three 16-token blocks hit, on one replica
    assert [t for t, _ in both + rest] == [r.outputs[0].token_ids for r in ref]
    assert dp.stats()["prefix_cache_hits"] >= 48


def test_a_dead_replica_fails_its_requests_and_the_other_serves(dp, prompts):
    def broken(stage, req):
        if stage == "forward":
            raise RuntimeError("replica 0 is broken")

    dp.engines[0].core.fault_injector = broken

    async def main():
        results = []
        for i in range(4):  # replica 0 gets requests until it gives up (3 failed steps in a row)
            try:
                results.append(await run(dp, f"r{i}", prompts[i % 2]))
            except Exception as e:  # noqa: BLE001
                results.append(e)
        after = await asyncio.gather(*(run(dp, f"s{i}", prompts[i]) for i in range(3)))
        return results, after

    results, after = asyncio.run(main())
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors and all("replica 0 is broken" in str(e) or isinstance(e, EngineDeadError) for e in errors)
    assert dp.engines[0].dead is not None and dp.dead is None
    assert dp.alive() == [False, True]
    assert all(len(t) == 8 for t, _ in after)  # the survivor answers everything after
