"""Tensor parallelism on Ray across two nodes: a Ray cluster of two nodes on
this machine (ray.cluster_utils.Cluster, one CPU each, so the placement group
must put one rank on each), serving the tiny Llama with TP=2, gives the same
answer as one process; a killed actor is an error, not a hang.

Ray is an optional extra (`pip install -e .[ray]`; ./run.sh test installs it)."""
from __future__ import annotations

import json

import pytest
import torch

from jevons import LLM, SamplingParams

ray = pytest.importorskip("ray")

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=3)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def prompts(tiny_llama):
    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(1)
    ps = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in [40, 9, 21]]
    return [{"prompt_token_ids": p} for p in ps]


@pytest.fixture(scope="module")
def tp2(cluster, tiny_llama):
    llm = LLM(str(tiny_llama), dtype="float32", progress=False, tensor_parallel_size=2,
              distributed_executor_backend="ray", max_num_batched_tokens=16)
    yield llm
    llm.engine.close()


def test_tp2_over_two_ray_nodes_equals_one_process(tiny_llama, prompts, tp2):
    from ray.util import placement_group_table

    table = placement_group_table(tp2.engine.executor.pg)
    assert len(set(table["bundles_to_node_id"].values())) == 2  # one rank on each node
    ref = LLM(str(tiny_llama), dtype="float32", progress=False).generate(prompts, GREEDY, use_tqdm=False)
    out = tp2.generate(prompts, GREEDY, use_tqdm=False)
    for r, o in zip(ref, out):
        assert o.outputs[0].token_ids == r.outputs[0].token_ids
        for sr, so in zip(r.outputs[0].logprobs, o.outputs[0].logprobs):
            assert sr.keys() == so.keys()
            assert all(abs(sr[t].logprob - so[t].logprob) < 1e-4 for t in sr)
    seeded = SamplingParams(temperature=1.0, seed=3, max_tokens=8, ignore_eos=True)
    assert [o.outputs[0].token_ids for o in tp2.generate(prompts, seeded, use_tqdm=False)] == \
        [o.outputs[0].token_ids for o in LLM(str(tiny_llama), dtype="float32", progress=False)
         .generate(prompts, seeded, use_tqdm=False)]


def test_killed_actor_is_an_error_not_a_hang(prompts, tp2):
    core = tp2.engine
    ray.kill(core.executor.actors[1])
    core.add_request("r", prompts[1]["prompt_token_ids"], SamplingParams(temperature=0, max_tokens=4))
    (d,) = core.step()
    assert d.finish_reason == "error" and "worker rank 1 died" in d.error
    core.add_request("s", prompts[1]["prompt_token_ids"], SamplingParams(temperature=0, max_tokens=4))
    (d,) = core.step()  # every later step fails at once, with the same reason
    assert d.finish_reason == "error" and "worker rank 1 died" in d.error
