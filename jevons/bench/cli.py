"""`jevons bench throughput | latency | serve | consistency`: the argument
parsers. The work lives in run_offline.py, run_serve.py and consistency.py,
imported only when a command runs, so `jevons --help` stays fast."""
from __future__ import annotations

import argparse

from jevons.bench.arrivals import parse_rate
from jevons.bench.datasets import DATASETS


def parse_range(text: str) -> tuple[int, int]:
    """"128" -> (128, 128); "64:512" -> (64, 512), inclusive."""
    lo, _, hi = text.partition(":")
    try:
        a, b = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN:MAX, got {text!r}") from None
    if not 1 <= a <= b:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return a, b


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _prompt_count(text: str) -> int:
    from jevons.bench.consistency import PROMPTS

    n = int(text) if text.isdigit() else 0
    if not 1 <= n <= len(PROMPTS):
        raise argparse.ArgumentTypeError(f"expected 1 to {len(PROMPTS)}, got {text!r}")
    return n


def add_common_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("benchmark")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads for jevons and for llama.cpp (-t); default: every available core")
    g.add_argument("--seed", type=int, default=0, help="seed for datasets and arrivals (default: %(default)s)")
    g.add_argument("--json", default=None, metavar="PATH", help="write the results (and exact commands) as JSON")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_peer_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("peer (llama.cpp)")
    g.add_argument("--compare", action="store_true",
                   help="run the same workload on llama.cpp (same GGUF, same threads) and print jevons/peer ratios")
    g.add_argument("--llama-cpp-dir", default=None,
                   help="folder with llama-bench, llama-batched-bench, llama-server (default: find or build "
                        "with ../shared/peers/build-llama-cpp.sh)")


def add_dataset_args(p: argparse.ArgumentParser, input_len: str, output_len: str, datasets: tuple[str, ...]) -> None:
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", default="random", choices=datasets)
    g.add_argument("--dataset-path", default=None, help="ShareGPT-format JSON (for --dataset sharegpt)")
    g.add_argument("--sharegpt-output-len", type=int, default=None,
                   help="sharegpt: fixed output length (default: each reply's own length)")
    g.add_argument("--num-prompts", type=int, default=64)
    g.add_argument("--input-len", type=parse_range, default=parse_range(input_len), metavar="MIN[:MAX]",
                   help=f"prompt tokens, uniform in the range (default: {input_len}; the suffix for shared-prefix, "
                        "each user turn for multi-turn)")
    g.add_argument("--output-len", type=parse_range, default=parse_range(output_len), metavar="MIN[:MAX]",
                   help=f"generated tokens, uniform in the range, ignore_eos (default: {output_len})")
    g.add_argument("--prefix-len", type=int, default=256, help="shared-prefix: tokens in each common prefix")
    g.add_argument("--num-prefixes", type=int, default=4, help="shared-prefix: distinct prefixes")
    g.add_argument("--turns", type=int, default=3, help="multi-turn: turns per conversation")


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    from jevons.cli_args import add_engine_args

    bench = sub.add_parser("bench", help="throughput, latency and online serving benchmarks, with llama.cpp beside")
    bsub = bench.add_subparsers(dest="bench_command", required=True)

    t = bsub.add_parser("throughput", help="offline: N seeded requests through the engine at once")
    add_engine_args(t)
    add_dataset_args(t, "64:512", "64:256", ("random", "shared-prefix", "multi-turn", "sharegpt"))
    add_common_args(t)
    t.set_defaults(func=_run("run_offline", "cmd_throughput"))

    lat = bsub.add_parser("latency", help="prefill tok/s and decode tok/s at batch 1 and batch B")
    add_engine_args(lat)
    g = lat.add_argument_group("latency")
    g.add_argument("--prompt-len", type=int, default=512, help="prefill prompt tokens, P (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=32, help="decode batch B (default: %(default)s)")
    g.add_argument("--decode-prompt-len", type=int, default=128,
                   help="prompt tokens before decoding, per sequence (llama-batched-bench -npp; default: %(default)s)")
    g.add_argument("--output-len", type=int, default=128, help="decoded tokens per sequence (default: %(default)s)")
    g.add_argument("--num-iters", type=int, default=3, help="repetitions; medians are reported (default: %(default)s)")
    add_common_args(lat)
    add_peer_args(lat)
    g.add_argument("--structured", action="store_true",
                   help="decode under a JSON schema (grammar-constrained), to compare with a run without")
    lat.set_defaults(func=_run("run_offline", "cmd_latency"))

    s = bsub.add_parser("serve", help="online: stream a dataset to an OpenAI-compatible server at a request rate")
    g = s.add_argument_group("server")
    g.add_argument("--base-url", default=None,
                   help="a running server, e.g. http://127.0.0.1:8000 (default: launch `jevons serve` "
                        "with the engine flags below on a loopback port)")
    g.add_argument("--endpoint", default="/v1/completions", choices=["/v1/completions", "/v1/chat/completions"])
    g.add_argument("--served-model-name", default=None, help="the 'model' field (default: first of /v1/models)")
    g.add_argument("--api-key", default=None)
    g.add_argument("--tokenizer", default=None,
                   help="model whose tokenizer builds the prompts (default: --model)")
    g.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request before it counts as failed")
    g.add_argument("--startup-timeout", type=float, default=600.0, help="seconds a launched server may take to start")
    add_engine_args(s)
    add_dataset_args(s, "128:512", "128", DATASETS)
    g = s.add_argument_group("load")
    g.add_argument("--request-rate", type=_rate, nargs="+", default=[float("inf")], metavar="RATE",
                   help="requests/s, Poisson arrivals; inf sends all at once; several values make a sweep")
    g.add_argument("--burstiness", type=float, default=1.0, help="gamma shape: 1 Poisson, <1 burstier (default: 1)")
    g.add_argument("--max-concurrency", type=int, default=None, help="cap on requests in flight")
    g.add_argument("--goodput", nargs="+", default=None, metavar="KEY:MS",
                   help="SLOs for goodput, e.g. ttft:500 tpot:50 (keys: ttft, tpot, e2el)")
    g.add_argument("--plot", default=None, metavar="PNG",
                   help="plot latency vs throughput over the rates (default with --json and several rates: "
                        "next to the JSON)")
    add_common_args(s)
    add_peer_args(s)
    g = s.add_argument_group("peer server")
    g.add_argument("--parallel", type=int, default=None, help="llama-server slots (default: --max-num-seqs)")
    g.add_argument("--peer-base-url", default=None, help="a running peer server instead of launching llama-server")
    s.set_defaults(func=_run("run_serve", "cmd_serve"), engine_actions=_engine_actions(s))

    c = bsub.add_parser("consistency", help="same request, same answer: greedy and seeded outputs alone, "
                                            "after a prefix-cache hit, in a batch and chunked, compared token by token")
    add_engine_args(c)
    g = c.add_argument_group("consistency")
    g.add_argument("--num-prompts", type=_prompt_count, default=12,
                   help="chat prompts compared, 1-12 (default: %(default)s)")
    g.add_argument("--max-tokens", type=int, default=48, help="tokens per answer, ignore_eos (default: %(default)s)")
    g.add_argument("--batch-extra", type=int, default=32,
                   help="other prompts in the batch of variant (c) (default: %(default)s)")
    g.add_argument("--seeded-prompts", type=int, default=3,
                   help="prompts also sampled at temperature 1 with seed --seed (default: %(default)s)")
    g.add_argument("--chunk-tokens", type=int, default=16,
                   help="variant (d): per-step token budget while prefilling alone; 0 skips it (default: %(default)s)")
    g.add_argument("--head-tokens", type=int, default=16,
                   help="the leading tokens --check requires identical in (a)(b)(c) (default: %(default)s)")
    g.add_argument("--check", action="store_true",
                   help="exit 1 when the first --head-tokens differ or (b) missed the prefix cache; with "
                        "--deterministic also when any variant or seeded run differs at all")
    add_common_args(c)
    c.set_defaults(func=_run("consistency", "cmd_consistency"))

    # Kernel timings live beside the kernels they time; start-up timing in startup.py.
    from jevons.bench.kernels import add_kernels_parser
    from jevons.bench.startup import add_startup_parser

    add_kernels_parser(bsub)
    add_startup_parser(bsub)


def _engine_actions(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """The engine flags' actions, kept so a launched `jevons serve` gets the same
    engine settings this command was given."""
    return [a for g in p._action_groups if g.title == "engine" for a in g._group_actions]


def _run(module: str, fn: str):
    def call(a: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(f"jevons.bench.{module}"), fn)(a) or 0)

    return call
