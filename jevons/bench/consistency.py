"""`jevons bench consistency`: same request, same answer (issue 13).

Each of a dozen ordinary chat prompts is run greedily (temperature 0,
ignore_eos, a fixed number of tokens) several ways, and the token ids are
compared with the first run:

  (a) alone, with the prefix cache emptied first (a cold prefill);
  (b) alone again right after (a): a prefix-cache hit, checked and reported;
  (c) inside one batch with other prompts, prefix cache emptied first;
  (d) alone with a small per-step token budget, so the prompt is prefilled in
      chunks (the same engine, only the scheduler's budget changed), prefix
      cache emptied first; `--chunk-tokens 0` skips it.

A few prompts are also sampled at temperature 1 with a fixed seed, the same
four ways. The report gives, per prompt, the first token index where each
variant departs from (a), and how many prompts agree on the first 16 tokens and
on all of them. It is a measurement: the exit code is 0 unless `--check` asks
for a verdict (docs/benchmarks.md, "Consistency")."""
from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from typing import Any, Sequence

PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Give me one tip for writing readable Python code.",
    "Who wrote the play Hamlet?",
    "Why is the sky blue?",
    "List three prime numbers greater than ten.",
    "Describe a cat to someone who has never seen one.",
    "What should I pack for a weekend hiking trip?",
    "Summarize the plot of Cinderella in two sentences.",
)

FILLERS: tuple[str, ...] = (
    "How many legs does a spider have?",
    "Suggest a name for a small bakery.",
    "What is the boiling point of water at sea level?",
    "Write a short limerick about a frog.",
    "How do I reverse a list in JavaScript?",
    "What is the difference between weather and climate?",
    "Recommend a good book for a long flight.",
    "What is 345 plus 678?",
    "Translate 'thank you very much' into German.",
    "Why do leaves change color in autumn?",
    "Give me a quick recipe for scrambled eggs.",
    "Who painted the Mona Lisa?",
    "Explain what a black hole is to a child.",
    "What are the primary colors?",
    "Write a two-line poem about coffee.",
    "How can I fall asleep faster?",
    "What does HTTP stand for?",
    "Name three instruments in an orchestra.",
    "What is the largest planet in our solar system?",
    "How do vaccines work, briefly?",
    "Tell me a fun fact about octopuses.",
    "What is a good way to start learning chess?",
    "Convert 10 kilometers to miles.",
    "What is the main ingredient of guacamole?",
    "Write a polite email subject line asking for a meeting.",
    "Why do we have leap years?",
    "What is the square root of 144?",
    "Give me a synonym for 'happy'.",
    "How does a rainbow form?",
    "What is the capital of Japan?",
    "Explain recursion in one sentence.",
    "What are the three states of matter?",
)

VARIANTS = ("b", "c", "d")
VARIANT_NAMES = {"a": "alone (cold)", "b": "again (cache hit)", "c": "in a batch", "d": "chunked prefill"}


def first_diff(ref: Sequence[int], other: Sequence[int]) -> int | None:
    """The first index where the two token lists differ (a shorter list
    differs where it ends); None when they are identical."""
    for i, (x, y) in enumerate(zip(ref, other)):
        if x != y:
            return i
    return None if len(ref) == len(other) else min(len(ref), len(other))


def fillers(n: int) -> list[str]:
    """n filler prompts: the list, then variations of it."""
    return [FILLERS[i % len(FILLERS)] + ("" if i < len(FILLERS) else f" (take {i // len(FILLERS) + 1})")
            for i in range(n)]


def _describe(d: int | None) -> str:
    return "identical" if d is None else f"differs at {d}"


class Runner:
    """Sends chats to one LLM and records token ids and prefix-cache hits."""

    def __init__(self, llm: Any, bar: Any) -> None:
        self.llm = llm
        self.bar = bar

    def reset_cache(self) -> None:
        # Only between requests, with every block free: the next prefill is cold.
        pool = getattr(getattr(self.llm.engine, "kv", None), "pool", None)
        if pool is not None and hasattr(pool, "reset_prefix_cache"):
            pool.reset_prefix_cache()

    def chat(self, prompts: Sequence[str], params: Any | Sequence[Any]) -> list[dict[str, Any]]:
        outs = self.llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
        self.bar.update(len(prompts))
        return [{"token_ids": list(o.outputs[0].token_ids), "text": o.outputs[0].text,
                 "num_cached_tokens": o.num_cached_tokens} for o in outs]

    def alone(self, prompts: Sequence[str], params: Any, cold: bool) -> list[dict[str, Any]]:
        out = []
        for p in prompts:
            if cold:
                self.reset_cache()
            out.extend(self.chat([p], params))
        return out

    def batch(self, prompts: Sequence[str], extra: Sequence[str], params: Any, filler_params: Any,
              seed: int) -> tuple[list[dict[str, Any]], list[int]]:
        """The prompts at seeded positions among the fillers, one generate call,
        cold cache. Returns their results and positions in the batch."""
        order = [("p", i) for i in range(len(prompts))] + [("f", i) for i in range(len(extra))]
        random.Random(seed).shuffle(order)
        texts = [prompts[i] if kind == "p" else extra[i] for kind, i in order]
        plist = [params if kind == "p" else filler_params for kind, _ in order]
        self.reset_cache()
        res = self.chat(texts, plist)
        pos = {i: j for j, (kind, i) in enumerate(order) if kind == "p"}
        return [res[pos[i]] for i in range(len(prompts))], [pos[i] for i in range(len(prompts))]

    def chunked(self, prompts: Sequence[str], params: Any, budget: int) -> list[dict[str, Any]]:
        """Alone and cold with a per-step token budget of `budget`: the prompt is
        prefilled over several steps. Only the scheduler's budget changes (it
        is read every step), so the model, weights and cache are the same."""
        sched = self.llm.engine.scheduler
        saved = sched.cfg
        sched.cfg = dataclasses.replace(saved, max_num_batched_tokens=budget)
        try:
            return self.alone(prompts, params, cold=True)
        finally:
            sched.cfg = saved


def compare(runs: dict[str, list[dict[str, Any]]], prompts: Sequence[str], head: int) -> list[dict[str, Any]]:
    rows = []
    for i, p in enumerate(prompts):
        ref = runs["a"][i]["token_ids"]
        row: dict[str, Any] = {"prompt": p, "num_tokens": len(ref), "text_a": runs["a"][i]["text"],
                               "first_diff": {}, "num_cached_tokens": {}, "token_ids": {}, "text": {}}
        for v, res in runs.items():
            row["token_ids"][v] = res[i]["token_ids"]
            row["num_cached_tokens"][v] = res[i]["num_cached_tokens"]
            if v != "a":
                row["first_diff"][v] = first_diff(ref, res[i]["token_ids"])
                if row["first_diff"][v] is not None:
                    row["text"][v] = res[i]["text"]
        diffs = list(row["first_diff"].values())
        abc = [row["first_diff"][v] for v in ("b", "c")]
        row["head_identical"] = all(d is None or d >= head for d in abc)  # (a)(b)(c) on the first `head` tokens
        row["identical_abc"] = all(d is None for d in abc)
        row["identical_all"] = all(d is None for d in diffs)
        rows.append(row)
    return rows


def run_consistency(llm: Any, *, num_prompts: int = 12, max_tokens: int = 48, batch_extra: int = 32,
                    seeded_prompts: int = 3, seed: int = 0, chunk_tokens: int = 16, head_tokens: int = 16,
                    progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    from jevons.sampling_params import SamplingParams

    if not 1 <= num_prompts <= len(PROMPTS):
        raise ValueError(f"--num-prompts must be in 1..{len(PROMPTS)}, got {num_prompts}")
    prompts = list(PROMPTS[:num_prompts])
    seeded = prompts[:max(0, min(seeded_prompts, num_prompts))]
    extra = fillers(batch_extra)
    head = min(head_tokens, max_tokens)
    greedy = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    sampled = SamplingParams(temperature=1.0, top_p=1.0, top_k=-1, seed=seed, max_tokens=max_tokens, ignore_eos=True)
    do_d = chunk_tokens > 0
    per_set = lambda ps: 3 * len(ps) + len(extra) + (len(ps) if do_d else 0)  # noqa: E731
    total = per_set(prompts) + (per_set(seeded) if seeded else 0)
    bar = tqdm(total=total, desc="consistency", unit="req", disable=not progress, leave=False)
    run = Runner(llm, bar)
    t0 = time.perf_counter()

    def four_ways(ps: list[str], params: Any) -> tuple[dict[str, list[dict[str, Any]]], list[int]]:
        runs: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
        bar.set_postfix_str("(a) alone, (b) again")
        for p in ps:  # (b) right after its own (a): (a)'s blocks are in the prefix cache
            runs["a"] += run.alone([p], params, cold=True)
            runs["b"] += run.chat([p], params)
        bar.set_postfix_str("(c) batch")
        runs["c"], positions = run.batch(ps, extra, params, greedy, seed)
        if do_d:
            bar.set_postfix_str("(d) chunked")
            runs["d"] = run.chunked(ps, params, chunk_tokens)
        return runs, positions

    runs, positions = four_ways(prompts, greedy)
    rows = compare(runs, prompts, head)
    seeded_rows: list[dict[str, Any]] = []
    if seeded:
        sruns, _ = four_ways(seeded, sampled)
        seeded_rows = compare(sruns, seeded, head)
    bar.close()
    elapsed = time.perf_counter() - t0

    n = len(rows)
    caching = bool(getattr(getattr(getattr(llm.engine, "kv", None), "pool", None), "enable_caching", False))
    summary = {
        "num_prompts": n,
        "max_tokens": max_tokens,
        "head_tokens": head,
        "head_identical_abc": sum(r["head_identical"] for r in rows),
        "identical_abc": sum(r["identical_abc"] for r in rows),
        "identical_all": sum(r["identical_all"] for r in rows),
        "identical": {v: sum(r["first_diff"].get(v, 0) is None for r in rows) for v in VARIANTS if v in runs},
        "seeded_identical_all": sum(r["identical_all"] for r in seeded_rows),
        "seeded_prompts": len(seeded_rows),
        "prefix_caching": caching,
        "cache_hits_b": sum(r["num_cached_tokens"]["b"] > 0 for r in rows),
        "elapsed_s": elapsed,
    }
    return {
        "settings": {"num_prompts": n, "max_tokens": max_tokens, "batch_extra": len(extra),
                     "batch_size": n + len(extra), "batch_positions": positions, "seeded_prompts": len(seeded),
                     "seed": seed, "chunk_tokens": chunk_tokens if do_d else None, "head_tokens": head,
                     "greedy": {"temperature": 0, "max_tokens": max_tokens, "ignore_eos": True},
                     "sampled": {"temperature": 1.0, "top_p": 1.0, "seed": seed, "max_tokens": max_tokens,
                                 "ignore_eos": True}},
        "fillers": extra,
        "prompts": rows,
        "seeded": seeded_rows,
        "summary": summary,
    }


def check(result: dict[str, Any], deterministic: bool) -> list[str]:
    """What `--check` fails on (empty: passed). Default: every prompt's first
    `head_tokens` identical in (a)(b)(c), and (b) a real cache hit. With
    --deterministic: every variant and every seeded run identical throughout."""
    s = result["summary"]
    failures = []
    if s["head_identical_abc"] < s["num_prompts"]:
        failures.append(f"first {s['head_tokens']} tokens identical in (a)(b)(c) for "
                        f"{s['head_identical_abc']}/{s['num_prompts']} prompts")
    if s["prefix_caching"] and s["cache_hits_b"] < s["num_prompts"]:
        failures.append(f"(b) hit the prefix cache for {s['cache_hits_b']}/{s['num_prompts']} prompts")
    if deterministic:
        if s["identical_all"] < s["num_prompts"]:
            failures.append(f"--deterministic: all {s['max_tokens']} tokens identical in every variant for "
                            f"{s['identical_all']}/{s['num_prompts']} prompts")
        if s["seeded_identical_all"] < s["seeded_prompts"]:
            failures.append(f"--deterministic: seeded sampling identical for "
                            f"{s['seeded_identical_all']}/{s['seeded_prompts']} prompts")
    return failures


def _short(text: str, n: int = 44) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def render(result: dict[str, Any], title: str) -> str:
    from jevons.bench.report import table

    s = result["summary"]
    variants = [v for v in VARIANTS if any(v in r["first_diff"] for r in result["prompts"])]
    headers = ["prompt", "cached tokens (b)", *(f"({v}) {VARIANT_NAMES[v]}" for v in variants)]

    def rows(rs: list[dict[str, Any]]) -> list[list[Any]]:
        return [[f"{i:>2} {_short(r['prompt'])}", r["num_cached_tokens"]["b"],
                 *(_describe(r["first_diff"][v]) for v in variants)] for i, r in enumerate(rs)]

    out = [table(headers, rows(result["prompts"]), title=title + " -- greedy (temperature 0)")]
    if result["seeded"]:
        out.append(table(headers, rows(result["seeded"]),
                         title=f"seeded sampling (temperature 1, top_p 1, seed {result['settings']['seed']})"))
    n, lines = s["num_prompts"], []
    lines.append(f"first {s['head_tokens']} tokens identical in (a)(b)(c): {s['head_identical_abc']}/{n} prompts")
    lines.append(f"all {s['max_tokens']} tokens identical in (a)(b)(c):  {s['identical_abc']}/{n} prompts")
    if "d" in variants:
        lines.append(f"all {s['max_tokens']} tokens identical in (a)(b)(c)(d): {s['identical_all']}/{n} prompts")
    if s["seeded_prompts"]:
        lines.append(f"seeded sampling identical in every variant: {s['seeded_identical_all']}/{s['seeded_prompts']}"
                     " prompts")
    lines.append(f"(b) prefix-cache hits: {s['cache_hits_b']}/{n} prompts"
                 + ("" if s["prefix_caching"] else " (prefix caching is off)"))
    lines.append(f"elapsed: {s['elapsed_s']:.1f} s")
    out.append("\n".join(lines))
    return "\n\n".join(out)


def cmd_consistency(a: argparse.Namespace) -> int:
    from jevons.bench.report import write_json
    from jevons.bench.run_offline import _engine_desc, _label, _load
    from jevons.bench.threads import apply_threads

    threads = apply_threads(a.threads)
    # The batch must fit in one step's sequences, or (c) would not be one batch.
    llm = _load(a, max_num_seqs=max(a.max_num_seqs, a.num_prompts + a.batch_extra))
    engine = _engine_desc(llm, a, threads) | {"deterministic": bool(a.deterministic)}
    result = run_consistency(llm, num_prompts=a.num_prompts, max_tokens=a.max_tokens, batch_extra=a.batch_extra,
                             seeded_prompts=a.seeded_prompts, seed=a.seed, chunk_tokens=a.chunk_tokens,
                             head_tokens=a.head_tokens, progress=not a.no_progress)
    title = (f"consistency: {_label(engine)}{' deterministic' if a.deterministic else ''}, {threads} threads, "
             f"{a.max_tokens} tokens, batch of {result['settings']['batch_size']}"
             + (f", chunks of {a.chunk_tokens}" if a.chunk_tokens > 0 else ""))
    print(render(result, title))
    failures = check(result, a.deterministic)
    result["check"] = {"failures": failures, "passed": not failures}
    if a.check:
        print("check: " + ("passed" if not failures else "FAILED: " + "; ".join(failures)))
    if a.json:
        write_json(a.json, {"benchmark": "consistency", "engine": engine, **result})
    if a.check and failures:
        print("jevons bench consistency --check: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0
