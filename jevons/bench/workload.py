"""From the dataset flags to a list of SampleRequests (shared by the offline
and online benchmarks, so both can run the very same workload)."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from jevons.bench.datasets import (SampleRequest, multi_turn_dataset, random_dataset, sharegpt_dataset,
                                   shared_prefix_dataset)


def dataset_from_args(a: argparse.Namespace, pool: Sequence[int], tokenizer: Any = None) -> list[SampleRequest]:
    n = a.num_prompts
    if n < 1:
        raise SystemExit("--num-prompts must be at least 1")
    if a.dataset == "random":
        return random_dataset(n, a.input_len, a.output_len, pool, a.seed)
    if a.dataset == "shared-prefix":
        return shared_prefix_dataset(n, a.num_prefixes, a.prefix_len, a.input_len, a.output_len, pool, a.seed)
    if a.dataset == "multi-turn":
        return multi_turn_dataset(n, a.turns, a.input_len, a.output_len, pool, a.seed)
    if a.dataset == "sharegpt":
        if not a.dataset_path or tokenizer is None:
            raise SystemExit("--dataset sharegpt needs --dataset-path FILE.json (and a tokenizer)")
        return sharegpt_dataset(a.dataset_path, n, tokenizer, a.seed, output_len=a.sharegpt_output_len)
    raise SystemExit(f"unknown dataset {a.dataset!r}")


def describe(a: argparse.Namespace) -> dict[str, Any]:
    """The workload's settings, for the JSON and the results header."""
    d: dict[str, Any] = {"dataset": a.dataset, "num_prompts": a.num_prompts, "input_len": list(a.input_len),
                         "output_len": list(a.output_len), "seed": a.seed}
    if a.dataset == "shared-prefix":
        d |= {"prefix_len": a.prefix_len, "num_prefixes": a.num_prefixes}
    elif a.dataset == "multi-turn":
        d["turns"] = a.turns
    elif a.dataset == "sharegpt":
        d["dataset_path"] = a.dataset_path
    return d


def describe_text(a: argparse.Namespace) -> str:
    """One line for the results header, e.g. "random, 64 prompts, in 128:512, out 128, seed 0"."""
    rng = lambda r: f"{r[0]}" if r[0] == r[1] else f"{r[0]}:{r[1]}"  # noqa: E731
    extra = {"shared-prefix": f", {a.num_prefixes} prefixes of {a.prefix_len}",
             "multi-turn": f", {a.turns} turns", "sharegpt": f", {a.dataset_path}"}.get(a.dataset, "")
    return (f"{a.dataset}{extra}, {a.num_prompts} prompts, in {rng(a.input_len)}, "
            f"out {rng(a.output_len)}, seed {a.seed}")
