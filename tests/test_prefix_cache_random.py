"""500 requests with random shared prefixes, arriving while others run, some
aborted mid-flight, in a pool small enough to evict and preempt constantly,
over small host and disk tiers. At the end: no block leaked, the disk within
its bound, and every finished greedy output equal to an uncached engine's."""
import random


from conftest import assert_no_leaks
from jevons import LLM, SamplingParams
from jevons.engine.cache_tiers.disk_format import HEADER_SIZE

BLOCK = 4
PAYLOAD = BLOCK * 512  # the tiny llama: 2 layers x (K + V) x 2 heads x 16 dims x 4 bytes per token
DISK_FILES = 60


def workload(seed: int, n: int):
    rng = random.Random(seed)
    prefixes = [[rng.randrange(3, 300) for _ in range(rng.randrange(4, 40))] for _ in range(12)]
    for i in range(n):
        base = rng.choice(prefixes)
        prompt = base[: rng.randrange(0, len(base) + 1)] + [rng.randrange(3, 300) for _ in range(rng.randrange(1, 10))]
        params = SamplingParams(temperature=0, max_tokens=rng.randrange(1, 10), ignore_eos=True)
        yield str(i), prompt, params


def test_random_prefixes_aborts_evictions(tiny_llama, tmp_path):
    llm = LLM(str(tiny_llama), dtype="float32", progress=False, block_size=BLOCK, num_kv_blocks=24,
              max_num_seqs=8, max_num_batched_tokens=64, cpu_cache_size=12 * PAYLOAD,
              disk_cache_dir=tmp_path, disk_cache_size=DISK_FILES * (HEADER_SIZE + PAYLOAD))
    core = llm.engine
    rng = random.Random(1)
    prompts: dict[str, list[int]] = {}
    outputs: dict[str, list[int]] = {}
    finished: dict[str, str] = {}
    in_flight: list[str] = []

    def step() -> None:
        for d in core.step():
            outputs[d.parent_id] += d.token_ids
            if d.finish_reason is not None:
                finished[d.parent_id] = d.finish_reason
                in_flight.remove(d.parent_id)

    for rid, prompt, params in workload(0, 500):
        core.add_request(rid, prompt, params)
        prompts[rid], outputs[rid] = prompt, []
        in_flight.append(rid)
        for _ in range(rng.randrange(0, 3)):
            step()
        if in_flight and rng.random() < 0.15:
            victim = rng.choice(in_flight)
            core.abort(victim)
            in_flight.remove(victim)
            finished[victim] = "abort"
    while core.has_work():
        step()

    assert_no_leaks(llm)
    assert core.kv.flush(30)
    files = list(core.kv.tiers.disk.dir.glob("*.kv"))
    assert len(files) <= DISK_FILES
    assert sum(f.stat().st_size for f in files) <= DISK_FILES * (HEADER_SIZE + PAYLOAD)
    s = core.stats()
    assert s["prefix_cache_hits_device"] > 0 and s["prefix_cache_hits_host"] > 0 and s["prefix_cache_hits_disk"] > 0
    assert s["prefix_cache_evictions_device"] > 0 and s["prefix_cache_evictions_host"] > 0
    assert s["prefix_cache_evictions_disk"] > 0 and s["disk_cache_corrupt"] == 0
    assert core.scheduler.num_preemptions > 0
    aborted = [r for r, why in finished.items() if why == "abort"]
    assert len(finished) == 500 and 30 < len(aborted) < 150
    core.close()

    # Every completed request's greedy output, against an engine without the cache.
    done = [r for r, why in finished.items() if why != "abort"]
    ref = LLM(str(tiny_llama), dtype="float32", progress=False, block_size=BLOCK, enable_prefix_caching=False)
    params = {rid: p for rid, _, p in workload(0, 500)}
    want = ref.generate([{"prompt_token_ids": prompts[r]} for r in done], [params[r] for r in done], use_tqdm=False)
    assert [outputs[r] for r in done] == [o.outputs[0].token_ids for o in want]
