"""The tiered prefix cache through the whole engine: greedy output is the same
with the cache on and off (shared prefixes, multi-turn, after a restart from
disk, for GQA and MLA caches, chunked, preempted, n > 1), damaged cache files
are misses, and hits are reported per tier."""
import json
from types import SimpleNamespace

import pytest
import torch

from conftest import assert_no_leaks
from jevons import LLM, SamplingParams
from jevons.engine.block_hash import extend_block_hashes
from jevons.engine.cache_tiers.disk_format import HEADER_SIZE
from test_deepseek_tiny import build_deepseek
from tiny_models import build_model

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def long_llama(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("pc-llama"), "llama", max_position_embeddings=2048)


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(3, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def make(model, **kw) -> LLM:
    return LLM(str(model), dtype="float32", progress=False, **kw)


def gen(llm: LLM, prompts, params=GREEDY):
    prompts = [{"prompt_token_ids": p} for p in prompts]
    return llm.generate(prompts, params, use_tqdm=False)


def tokens(outs) -> list[list[int]]:
    return [[c.token_ids for c in o.outputs] for o in outs]


def reference(model, prompts, params=GREEDY) -> list[list[int]]:
    return tokens(gen(make(model, enable_prefix_caching=False), prompts, params))


def test_restart_from_disk_1000_token_prompt(long_llama, tmp_path):
    prompt, other = ids(1000, 1), ids(1000, 2)
    want = reference(long_llama, [prompt])
    # 70 blocks of 16 hold one of these prompts, not two: the second evicts the first.
    llm = make(long_llama, num_kv_blocks=70, disk_cache_dir=tmp_path)
    first = gen(llm, [prompt])
    assert tokens(first) == want and first[0].num_cached_tokens == 0
    gen(llm, [other])
    assert llm.engine.stats()["prefix_cache_evictions_device"] >= 50
    back = gen(llm, [prompt])  # evicted from the device, found on disk
    assert tokens(back) == want and back[0].num_cached_tokens == 992
    assert llm.engine.stats()["prefix_cache_hits_disk"] > 0
    assert_no_leaks(llm)
    llm.engine.close()

    restarted = make(long_llama, num_kv_blocks=70, disk_cache_dir=tmp_path)
    out = gen(restarted, [prompt])
    assert out[0].num_cached_tokens >= 960 and tokens(out) == want
    stats = restarted.engine.stats()
    assert stats["prefix_cache_hits_disk"] == 992 and stats["disk_cache_corrupt"] == 0
    assert_no_leaks(restarted)
    restarted.engine.close()


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


@pytest.mark.parametrize("damage,block", [
    ("payload", 10), ("header", 7), ("truncate", 3), ("delete", 12),
])
def test_damaged_cache_file_is_a_miss_not_wrong_output(long_llama, tmp_path, damage, block):
    prompt = ids(300, 3)
    want = reference(long_llama, [prompt])
    llm = make(long_llama, disk_cache_dir=tmp_path)
    assert tokens(gen(llm, [prompt])) == want
    llm.engine.close()
    hashes: list[bytes] = []
    extend_block_hashes(hashes, prompt, 16, llm.engine.kv.extra_key)
    path = llm.engine.kv.tiers.disk.path(hashes[block])
    size = path.stat().st_size
    if damage == "payload":
        _flip(path, HEADER_SIZE + size // 3)
    elif damage == "header":
        _flip(path, 60)  # inside the stored block hash
    elif damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(size - 7)
    else:
        path.unlink()

    again = make(long_llama, disk_cache_dir=tmp_path)
    out = gen(again, [prompt])
    assert tokens(out) == want
    assert out[0].num_cached_tokens == 16 * block  # the chain stops at the damaged block
    assert again.engine.stats()["disk_cache_corrupt"] == (0 if damage == "delete" else 1)
    again.engine.close()
    # The recomputed block was written again: the next start hits it all.
    third = make(long_llama, disk_cache_dir=tmp_path)
    out = gen(third, [prompt])
    assert tokens(out) == want and out[0].num_cached_tokens == 16 * ((300 - 1) // 16)
    third.engine.close()


def test_multi_turn_conversation(long_llama, tmp_path):
    """Each turn's prompt is the last prompt, the reply and a new message. A
    distractor between turns pushes most of the conversation out of the small
    device pool, so later turns come back from all three tiers."""

    def converse(llm: LLM) -> tuple[list[list[int]], list[int]]:
        prompt, replies, cached = ids(60, 10), [], []
        for turn in range(4):
            out = gen(llm, [prompt])[0]
            replies.append(out.outputs[0].token_ids)
            cached.append(out.num_cached_tokens)
            gen(llm, [ids(560, 100 + turn)])  # distractor: 36 blocks
            prompt = prompt + replies[-1] + ids(25, 20 + turn)
        return replies, cached

    want, _ = converse(make(long_llama, enable_prefix_caching=False))
    llm = make(long_llama, num_kv_blocks=40, cpu_cache_size=16 * 2 * 512, disk_cache_dir=tmp_path)
    got, cached = converse(llm)
    assert got == want
    # Turn t reuses everything turn t-1 computed: its prompt and all but the last reply token.
    lens = [60 + sum(12 + 25 for _ in range(t)) for t in range(4)]
    assert cached == [0] + [16 * ((lens[t - 1] + 12 - 1) // 16) for t in range(1, 4)]
    s = llm.engine.stats()
    # The device kept each conversation's first blocks, a 2-block host tier the
    # next ones, and the disk the rest.
    assert s["prefix_cache_hits_device"] > 0 and s["prefix_cache_hits_host"] > 0 and s["prefix_cache_hits_disk"] > 0
    by_tier = s["prefix_cache_hits_device"] + s["prefix_cache_hits_host"] + s["prefix_cache_hits_disk"]
    assert by_tier == s["prefix_cache_hits"]
    assert_no_leaks(llm)
    llm.engine.close()


def test_shared_prefix_batch_chunked_preempted_n(long_llama, tmp_path):
    system = ids(100, 5)
    prompts = [system + ids(5 + 3 * i, 30 + i) for i in range(8)]
    want = reference(long_llama, prompts)
    kw = dict(block_size=8, num_kv_blocks=40, cpu_cache_size=8 * 30 * 512, disk_cache_dir=tmp_path,
              max_num_batched_tokens=48)
    llm = make(long_llama, **kw)
    assert tokens(gen(llm, prompts)) == want
    again = gen(llm, prompts)
    assert tokens(again) == want and all(o.num_cached_tokens >= 96 for o in again)
    assert llm.engine.scheduler.num_preemptions > 0
    # n > 1: the siblings attach the leader's blocks, whatever tier they came from.
    p = SamplingParams(n=3, temperature=0.8, seed=7, max_tokens=8, ignore_eos=True)
    want_n = reference(long_llama, [prompts[2]], p)
    assert tokens(gen(llm, [prompts[2]], p)) == want_n
    assert_no_leaks(llm)
    llm.engine.close()
    restarted = make(long_llama, **kw)
    assert tokens(gen(restarted, [prompts[2]], p)) == want_n
    assert tokens(gen(restarted, prompts)) == want
    assert restarted.engine.stats()["prefix_cache_hits_disk"] > 0
    assert_no_leaks(restarted)
    restarted.engine.close()


def test_another_model_never_reads_these_files(long_llama, tmp_path, tmp_path_factory):
    prompt = ids(200, 4)
    llm = make(long_llama, disk_cache_dir=tmp_path)
    gen(llm, [prompt])
    llm.engine.close()
    twin = build_model(tmp_path_factory.mktemp("pc-twin"), "llama", seed=1, max_position_embeddings=2048)
    other = make(twin, disk_cache_dir=tmp_path)
    out = gen(other, [prompt])
    assert out[0].num_cached_tokens == 0 and tokens(out) == reference(twin, [prompt])
    assert len([d for d in tmp_path.iterdir() if d.is_dir()]) == 2  # one folder per fingerprint
    other.engine.close()


def test_mla_latent_blocks_restart_from_disk(tmp_path, tmp_path_factory):
    model = build_deepseek(tmp_path_factory.mktemp("pc-ds"), "v3")
    prompt, other = ids(150, 6), ids(150, 7)
    want = reference(model, [prompt])
    llm = make(model, num_kv_blocks=14, cpu_cache_size="64KiB", disk_cache_dir=tmp_path)
    assert tokens(gen(llm, [prompt])) == want
    gen(llm, [other])  # evicts the first prompt to host and disk
    back = gen(llm, [prompt])
    assert tokens(back) == want and back[0].num_cached_tokens == 144
    llm.engine.close()
    restarted = make(model, num_kv_blocks=14, disk_cache_dir=tmp_path)
    out = gen(restarted, [prompt])
    assert tokens(out) == want and out[0].num_cached_tokens == 144
    assert restarted.engine.stats()["prefix_cache_hits_disk"] == 144
    assert_no_leaks(restarted)
    restarted.engine.close()


def test_metrics_report_tiers(long_llama, tmp_path):
    from jevons.server.metrics import _EngineCollector

    llm = make(long_llama, disk_cache_dir=tmp_path)
    gen(llm, [ids(100, 8)])
    llm.engine.kv.flush()
    engine = SimpleNamespace(core=llm.engine, num_waiting=lambda: 0)
    state = SimpleNamespace(engine=engine, model_name="m", serving=None)
    metrics = {s.name + json.dumps(s.labels, sort_keys=True): s.value
               for m in _EngineCollector(state).collect() for s in m.samples}
    assert metrics['jevons:prefix_cache_tier_hits_total{"model_name": "m", "tier": "disk"}'] == 0
    assert metrics['jevons:disk_cache_bytes{"model_name": "m"}'] == llm.engine.kv.tiers.disk.bytes_on_disk > 0
    assert metrics['jevons:disk_cache_files{"model_name": "m"}'] == 6  # 111 computed tokens: 6 full blocks
    llm.engine.close()
