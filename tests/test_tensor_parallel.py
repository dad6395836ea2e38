"""Tensor parallelism gives the same answer as one process: the tiny Llama
sharded over two worker processes (gloo on the CPU) against the same model
in the engine's process -- greedy tokens equal, logprobs within float32
rounding, with chunked prefill, preemption and prefix-cache hits on the TP
side; seeded sampling equal too. A killed worker is an error, not a hang.

One TP=2 engine serves the whole module (starting worker processes is the
slow part); the kill test runs last and uses it up."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from conftest import assert_no_leaks
from jevons import LLM, SamplingParams
from jevons.config import ModelConfig, engine_config
from jevons.models.layers.tensor_parallel import TensorParallel

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=5)


def prompts(vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ps = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in [50, 7, 33, 64, 18, 90]]
    ps.append(ps[0][:48] + [5, 6, 7])  # shares three 16-token blocks with the first
    return [{"prompt_token_ids": p} for p in ps]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    return tiny_llama, prompts(vocab)


@pytest.fixture(scope="module")
def reference(tiny):
    model, ps = tiny
    llm = LLM(str(model), dtype="float32", progress=False)
    return llm, llm.generate(ps, GREEDY, use_tqdm=False)


@pytest.fixture(scope="module")
def tp2(tiny):
    """Chunked prefill (16-token budget) and a KV pool too small for the whole
    batch (preemption), on two ranks."""
    model, _ = tiny
    llm = LLM(str(model), dtype="float32", progress=False, tensor_parallel_size=2,
              max_num_batched_tokens=16, num_kv_blocks=24, block_size=8)
    yield llm
    llm.engine.close()


def close_logprobs(a, b, tol=1e-4) -> None:
    """Each step's top logprobs agree (same ids, values within tol)."""
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert sa.keys() == sb.keys()
        for t in sa:
            assert abs(sa[t].logprob - sb[t].logprob) < tol


def test_tp2_greedy_equals_one_process(tiny, reference, tp2):
    _, ps = tiny
    _, ref = reference
    out = tp2.generate(ps, GREEDY, use_tqdm=False)
    for r, o in zip(ref, out):
        assert o.outputs[0].token_ids == r.outputs[0].token_ids
        close_logprobs(o.outputs[0].logprobs, r.outputs[0].logprobs)
    core = tp2.engine
    from jevons.runner.executor import Executor

    assert isinstance(core.executor, Executor) and isinstance(reference[0].engine.executor, Executor)
    assert core.runner is None and reference[0].engine.runner is not None  # the model is in the workers
    assert core.scheduler.num_preemptions > 0  # 24 blocks of 8 cannot hold the batch
    assert core.kv_bytes_per_token == reference[0].engine.kv_bytes_per_token // 2  # each rank: its KV heads
    assert_no_leaks(tp2)
    # A prefix-cache hit on the sharded caches: the same answer again.
    again = tp2.generate(ps[-1], GREEDY, use_tqdm=False)[0]
    assert again.num_cached_tokens > 0
    assert again.outputs[0].token_ids == ref[-1].outputs[0].token_ids


def test_tp2_seeded_sampling_equals_one_process(tiny, reference, tp2):
    """Seeded draws happen in the workers: each generator's state travels
    there and back every step, so a seed gives the tokens it gives in one process."""
    _, ps = tiny
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=7, n=2, max_tokens=10, ignore_eos=True)
    ref = reference[0].generate(ps[:3], params, use_tqdm=False)
    out = tp2.generate(ps[:3], params, use_tqdm=False)
    assert [[c.token_ids for c in o.outputs] for o in out] == [[c.token_ids for c in r.outputs] for r in ref]


def test_step_fault_on_every_rank_fails_that_request_only(tiny, tp2):
    """A fault every rank hits alike (here: a banned token id outside the
    vocabulary, smuggled past validation, fails the sampler on both ranks)
    fails its request alone; the group stays usable."""
    _, ps = tiny
    core = tp2.engine
    core.add_request("bad", [1, 2, 3], SamplingParams(temperature=0, max_tokens=3, min_tokens=2))
    core.requests["bad"].stop_token_ids = frozenset({10**6})  # banned while under min_tokens
    core.add_request("good", ps[1]["prompt_token_ids"], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    done = {}
    while core.has_work():
        for d in core.step():
            if d.finish_reason is not None:
                done[d.parent_id] = d
    assert done["bad"].finish_reason == "error"
    assert done["good"].finish_reason == "length"
    core.executor.health()  # still running


def test_tp2_qwen2_tied_padded_vocab(tmp_path):
    """Qwen2's qkv bias cut with its heads; a tied head that is the
    vocab-parallel embedding's shard; a vocabulary (321) that two ranks split
    with one padding row."""
    from tiny_models import build_model

    model = build_model(tmp_path / "qwen2", "qwen2", tie_word_embeddings=True, vocab_size=321)
    ps = prompts(320)[:4]
    ref = LLM(str(model), dtype="float32", progress=False).generate(ps, GREEDY, use_tqdm=False)
    llm = LLM(str(model), dtype="float32", progress=False, tensor_parallel_size=2)
    try:
        out = llm.generate(ps, GREEDY, use_tqdm=False)
    finally:
        llm.engine.close()
    for r, o in zip(ref, out):
        assert o.outputs[0].token_ids == r.outputs[0].token_ids
        close_logprobs(o.outputs[0].logprobs, r.outputs[0].logprobs)
    assert all(not p.is_alive() for p in llm.engine.executor.procs)  # close() stopped the workers


def test_tp_splits_are_checked():
    with pytest.raises(ValueError, match="not divisible by the tensor-parallel size 3"):
        TensorParallel(0, 3).split(4, "the number of attention heads")
    assert TensorParallel(1, 4).kv_heads(2) == (0, 1)  # a KV head replicated on two ranks
    assert TensorParallel(3, 4).kv_heads(2) == (1, 1)
    assert TensorParallel(1, 2).vocab_shard(321) == (161, 161)  # the last shard padded by one row
    from jevons.models.registry import build_model

    cfg = ModelConfig.from_hf({"architectures": ["DeepseekV32ForCausalLM"], "vocab_size": 32, "hidden_size": 8,
                               "num_hidden_layers": 1, "num_attention_heads": 2})
    with pytest.raises(ValueError, match="not implemented for DeepseekV32ForCausalLM"):
        build_model(cfg, TensorParallel(0, 2))
    with pytest.raises(ValueError, match="tensor_parallel_size > 1 needs 'mp'"):
        engine_config(tensor_parallel_size=2, distributed_executor_backend="uni")


def test_killed_worker_is_an_error_not_a_hang(tiny, tp2):
    """Runs last: it uses up the module's engine."""
    _, ps = tiny
    core = tp2.engine
    victim = core.executor.procs[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(timeout=10)
    core.add_request("r", ps[1]["prompt_token_ids"], SamplingParams(temperature=0, max_tokens=5))
    deltas = core.step()  # the engine sees the death through the process sentinel, not by a timeout
    assert [d.finish_reason for d in deltas] == ["error"]
    assert "worker rank 1" in deltas[0].error and "exited with code -9" in deltas[0].error
    assert not core.has_work()
    assert all(not p.is_alive() for p in core.executor.procs)  # the survivor was stopped too
    # Every later step fails at once, with the same reason.
    core.add_request("s", ps[1]["prompt_token_ids"], SamplingParams(temperature=0, max_tokens=5))
    (d,) = core.step()
    assert d.finish_reason == "error" and "worker rank 1" in d.error
