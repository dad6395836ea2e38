"""`python -m jevons.bench.spec_decode`: batch-1 decode tok/s with and without
speculative decoding, side by side in one run, on a workload whose answer
copies from its prompt and on a free-form one, and whether greedy outputs
stay token-identical.

One engine serves both columns: speculation is switched by giving the
scheduler its proposer or not, so weights, caches and threads are the same.
The two modes alternate within each repetition and the best repetition is
kept (on a shared machine other work only ever slows a run down). Decode
tok/s counts the tokens after the first over the time after the first
(as `bench latency` does), so the prompt's prefill is not in it."""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from jevons.config import SpeculativeConfig

CODE = '''def moving_average(values, window):
    """Average of each run of `window` consecutive values."""
    result = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            result.append(total / window)
    return result


def normalize(values):
    low, high = min(values), max(values)
    if high == low:
        return [0.0 for _ in values]
    return [(v - low) / (high - low) for v in values]
'''

TEXT = ("The Jevons paradox occurs when technological progress increases the efficiency with which a resource "
        "is used, but the falling cost of use induces increases in demand enough that resource use is increased "
        "rather than reduced. William Stanley Jevons observed in 1865 that technological improvements that "
        "increased the efficiency of coal use led to the increased consumption of coal in a wide range of "
        "industries.")

# name -> (kind, chat message). "copy": the answer repeats the prompt's text.
WORKLOADS: dict[str, tuple[str, str]] = {
    "code-edit": ("copy", "Add a docstring to normalize and return the whole file, unchanged otherwise:\n\n" + CODE),
    "quote": ("copy", "Repeat the following paragraph word for word, then say which year it mentions.\n\n" + TEXT),
    "free-form": ("free", "Write a short story about a lighthouse keeper who finds a map."),
    "explain": ("free", "Explain to a child why the sky is blue and why sunsets are red."),
}


def _decode(core: Any, prompt_ids: list[int], params: Any, rid: str, clock=time.perf_counter
            ) -> tuple[list[int], float]:
    """One request alone; its tokens and decode tok/s after the first token."""
    core.add_request(rid, prompt_ids, params)
    tokens: list[int] = []
    t_first = t_end = 0.0
    done = False
    while not done:
        for d in core.step():
            tokens.extend(d.token_ids)
            now = clock()
            if not t_first and tokens:
                t_first = now
            if d.finish_reason is not None:
                t_end, done = now, True
    rate = (len(tokens) - 1) / (t_end - t_first) if len(tokens) > 1 and t_end > t_first else float("nan")
    return tokens, rate


def run(llm: Any, spec: SpeculativeConfig, max_tokens: int, reps: int, workloads: list[str],
        report=lambda row: None) -> list[dict[str, Any]]:
    from jevons.runner.spec.proposer import build_proposer
    from jevons.sampling_params import SamplingParams

    core = llm.engine
    tok = core.tokenizer
    proposer = build_proposer(spec)
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    rows = []
    for name in workloads:
        kind, message = WORKLOADS[name]
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True),
                         add_special_tokens=False)
        rates: dict[str, list[float]] = {"off": [], "on": []}
        outs: dict[str, list[int]] = {}
        before = dict(core.scheduler.spec_stats.as_dict())
        for r in range(reps):
            for mode in ("off", "on"):
                core.scheduler.proposer = proposer if mode == "on" else None
                toks, rate = _decode(core, ids, params, f"{name}-{mode}-{r}")
                rates[mode].append(rate)
                outs.setdefault(mode, toks)
        core.scheduler.proposer = None
        st = core.scheduler.spec_stats.as_dict()
        drafts = st["spec_decode_num_drafts"] - before["spec_decode_num_drafts"]
        accepted = st["spec_decode_num_accepted_tokens"] - before["spec_decode_num_accepted_tokens"]
        drafted = st["spec_decode_num_draft_tokens"] - before["spec_decode_num_draft_tokens"]
        off, on = max(rates["off"]), max(rates["on"])
        same = outs["off"] == outs["on"]
        diff = next((i for i, (a, b) in enumerate(zip(outs["off"], outs["on"])) if a != b),
                    None if len(outs["off"]) == len(outs["on"]) else min(len(outs["off"]), len(outs["on"])))
        rows.append({
            "workload": name, "kind": kind, "prompt_tokens": len(ids), "output_tokens": len(outs["on"]),
            "decode_tok_s_off": off, "decode_tok_s_on": on, "ratio": on / off,
            "mean_acceptance_length": 1 + accepted / drafts if drafts else 1.0,
            "acceptance_rate": accepted / drafted if drafted else 0.0,
            "identical": same, "first_diff": None if same else diff,
            "samples_off": rates["off"], "samples_on": rates["on"],
        })
        report(rows[-1])
    return rows


def identity(llm: Any, spec: SpeculativeConfig, num_prompts: int, max_tokens: int) -> dict[str, Any]:
    """Greedy answers to `bench consistency`'s prompts, all in one batch, with
    and without drafts: how many are token-identical, and where the others
    first differ."""
    from jevons.bench.consistency import PROMPTS
    from jevons.runner.spec.proposer import build_proposer
    from jevons.sampling_params import SamplingParams

    core = llm.engine
    chats = [[{"role": "user", "content": p}] for p in PROMPTS[:num_prompts]]
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    outs = {}
    for mode in ("off", "on"):
        core.scheduler.proposer = build_proposer(spec) if mode == "on" else None
        outs[mode] = [o.outputs[0].token_ids for o in llm.chat(chats, params, use_tqdm=False)]
    core.scheduler.proposer = None
    diffs = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
             for a, b in zip(outs["off"], outs["on"]) if a != b]
    return {"prompts": len(chats), "identical": len(chats) - len(diffs), "first_diffs": diffs}


def main(argv: list[str] | None = None) -> None:
    from jevons.cli_args import add_engine_args, engine_config
    from jevons.llm import LLM

    p = argparse.ArgumentParser(prog="python -m jevons.bench.spec_decode", description=__doc__.split("\n\n")[0])
    add_engine_args(p)
    p.add_argument("--spec", default='{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, '
                                     '"prompt_lookup_min": 2}', help="the speculative config measured (JSON)")
    p.add_argument("--max-tokens", type=int, default=192)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    p.add_argument("--identity", type=int, default=0, metavar="N",
                   help="also answer N of `bench consistency`'s prompts in one batch with and without drafts "
                        "and count token-identical answers")
    p.add_argument("--json", default=None, metavar="PATH")
    a = p.parse_args(argv)
    spec = SpeculativeConfig.parse(a.spec)
    llm = LLM(config=engine_config(a), progress=False)
    print(f"{'workload':<10} {'kind':<5} {'off tok/s':>9} {'on tok/s':>9} {'ratio':>6} {'accept len':>10} "
          f"{'accept %':>8} {'identical':>9}", flush=True)

    def report(r: dict[str, Any]) -> None:
        ident = "yes" if r["identical"] else f"no@{r['first_diff']}"
        print(f"{r['workload']:<10} {r['kind']:<5} {r['decode_tok_s_off']:>9.1f} {r['decode_tok_s_on']:>9.1f} "
              f"{r['ratio']:>6.2f} {r['mean_acceptance_length']:>10.2f} {100 * r['acceptance_rate']:>7.0f}% "
              f"{ident:>9}", flush=True)

    rows = run(llm, spec, a.max_tokens, a.reps, a.workloads.split(","), report) if a.workloads else []
    ident = identity(llm, spec, a.identity, a.max_tokens) if a.identity else None
    if ident is not None:
        print(f"batch of {ident['prompts']}: {ident['identical']} greedy answers token-identical with drafts; "
              f"the others first differ at {ident['first_diffs']}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"spec": a.spec, "deterministic": a.deterministic, "rows": rows, "identity": ident}, f, indent=1)


if __name__ == "__main__":
    main()
