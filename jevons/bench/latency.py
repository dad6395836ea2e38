"""`jevons bench latency`: the three numbers llama.cpp's own tools report, taken
on jevons's EngineCore directly (no HTTP, no output aggregation):

  prefill   one P-token prompt, timed until its first token (llama-bench ppP)
  decode@1  one sequence, tokens per second once its prompt is in the cache
            (llama-bench tgN; llama-batched-bench -npl 1)
  decode@B  B sequences decoding together, output tokens per second over the
            steps where all B decode (llama-batched-bench -npl B, S_TG)

Every iteration uses fresh random prompts so the prefix cache never turns a
prefill into a cache hit."""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from tqdm import tqdm


@dataclass
class LatencyResult:
    prefill_len: int
    decode_prompt_len: int
    decode_len: int
    batch_size: int
    prefill_tok_s: list[float] = field(default_factory=list)  # one per iteration
    decode_b1_tok_s: list[float] = field(default_factory=list)
    decode_bB_tok_s: list[float] = field(default_factory=list)

    def samples(self) -> dict[str, list[float]]:
        return {"prefill_tok_s": self.prefill_tok_s, "decode_b1_tok_s": self.decode_b1_tok_s,
                "decode_bB_tok_s": self.decode_bB_tok_s}

    def summary(self) -> dict[str, float]:
        """Medians over iterations: robust on a shared, noisy machine."""
        return {k: median(v) for k, v in self.samples().items()}


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def best(xs: Sequence[float]) -> float:
    """The fastest repetition: on a shared machine other work only ever slows
    a run down, so the best is the closest to the machine's real speed."""
    return max(xs) if xs else float("nan")


class _Prompts:
    """Seeded random prompts, a new one on every call."""

    def __init__(self, pool: Sequence[int], seed: int) -> None:
        self.pool, self.rng, self.n = pool, random.Random(seed), 0

    def __call__(self, length: int) -> list[int]:
        self.n += 1
        return [self.pool[self.rng.randrange(len(self.pool))] for _ in range(length)]


# --structured: decoding under this JSON schema (issue 15's overhead workload).
# At least 256 strings, so no sequence can complete it inside the measured steps.
STRUCTURED_SCHEMA = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"},
                                                                "minItems": 256}}, "required": ["items"]}


def _params(max_tokens: int, structured: bool = False):
    from jevons.sampling_params import SamplingParams, StructuredOutputsParams

    so = StructuredOutputsParams(json=STRUCTURED_SCHEMA) if structured else None
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, structured_outputs=so)


def time_prefill(core: Any, prompt: list[int], rid: str) -> float:
    """Seconds from submitting `prompt` to its first sampled token."""
    t0 = time.perf_counter()
    core.add_request(rid, prompt, _params(1))
    for _ in range(len(prompt) + 8):  # bounded: one chunk per step at worst
        if not core.has_work():
            break
        core.step()
    return time.perf_counter() - t0


def time_decode(core: Any, prompts: list[list[int]], decode_len: int, tag: str, structured: bool = False) -> float:
    """Output tok/s over the steps in which every sequence is decoding: after
    all prompts produced their first token, until the first one finishes."""
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    for rid, p in zip(ids, prompts):
        core.add_request(rid, p, _params(decode_len + 1, structured))
    started: set[str] = set()
    finished: set[str] = set()
    tokens, seconds = 0, 0.0
    limit = sum(len(p) for p in prompts) + (decode_len + 2) * len(prompts)
    for _ in range(limit):  # bounded; normally ends when the engine drains
        if not core.has_work():
            break
        all_decoding = len(started) == len(prompts) and not finished
        t0 = time.perf_counter()
        deltas = core.step()
        dt = time.perf_counter() - t0
        if all_decoding:
            tokens += sum(len(d.token_ids) for d in deltas)
            seconds += dt
        for d in deltas:
            started.add(d.parent_id)
            if d.finish_reason is not None:
                finished.add(d.parent_id)
    return tokens / seconds if seconds > 0 else float("nan")


def run_latency(llm: Any, pool: Sequence[int], prefill_len: int = 512, batch_size: int = 32,
                decode_prompt_len: int = 128, decode_len: int = 128, num_iters: int = 3,
                seed: int = 0, progress: bool = True, structured: bool = False) -> LatencyResult:
    core = llm.engine
    prompts = _Prompts(pool, seed)
    res = LatencyResult(prefill_len, decode_prompt_len, decode_len, batch_size)
    # Warm-up: one of each shape, results discarded.
    time_prefill(core, prompts(prefill_len), "warm-prefill")
    time_decode(core, [prompts(decode_prompt_len)], 8, "warm-decode", structured)
    steps = num_iters * (2 + (batch_size > 1))
    with tqdm(total=steps, desc="latency", unit="run", disable=not progress, leave=False) as bar:
        for it in range(num_iters):
            res.prefill_tok_s.append(prefill_len / time_prefill(core, prompts(prefill_len), f"prefill-{it}"))
            bar.update(1)
            res.decode_b1_tok_s.append(time_decode(core, [prompts(decode_prompt_len)], decode_len, f"b1-{it}",
                                                   structured))
            bar.update(1)
            if batch_size > 1:
                batch = [prompts(decode_prompt_len) for _ in range(batch_size)]
                res.decode_bB_tok_s.append(time_decode(core, batch, decode_len, f"bB-{it}", structured))
                bar.update(1)
    if batch_size == 1:
        res.decode_bB_tok_s = list(res.decode_b1_tok_s)
    return res
