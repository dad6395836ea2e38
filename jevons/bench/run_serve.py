"""`jevons bench serve`: the online benchmark, a request-rate sweep against
jevons (a running server, or one launched here) and, with --compare, against
llama-server with the same slots and threads, one server at a time."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
from pathlib import Path
from typing import Any, Iterator

from jevons.bench.metrics import calculate_metrics, parse_goodput
from jevons.bench.report import ratio, table, write_json
from jevons.bench.threads import resolve_threads


def engine_flags(a: argparse.Namespace) -> list[str]:
    """This command's engine flags as CLI arguments for a launched `jevons serve`
    (only those that differ from their defaults)."""
    flags: list[str] = []
    for act in a.engine_actions:
        value = getattr(a, act.dest)
        if value == act.default:
            continue
        if isinstance(act, argparse._StoreTrueAction):
            flags.append(act.option_strings[0])
        else:
            flags += [act.option_strings[0], str(value)]
    return flags


@contextlib.contextmanager
def _running(url: str) -> Iterator[str]:
    yield url


def _load_tokenizer(name: str):
    from jevons.loader.resolve import resolve_model
    from jevons.loader.load import load_tokenizer

    return load_tokenizer(resolve_model(name))


def _rows(results: list[dict[str, Any]], goodput: bool) -> list[list[Any]]:
    rows = []
    for m in results:
        row = ["inf" if math.isinf(m["request_rate"]) else m["request_rate"], m["completed"], m["failed"],
               m["request_throughput"], m["output_throughput"], m["total_token_throughput"],
               m["median_ttft_ms"], m["p99_ttft_ms"], m["median_tpot_ms"], m["p99_tpot_ms"],
               m["median_itl_ms"], m["median_e2el_ms"]]
        rows.append(row + ([m["request_goodput"]] if goodput else []))
    return rows


HEADERS = ["rate", "ok", "failed", "req/s", "out tok/s", "total tok/s", "med TTFT", "p99 TTFT",
           "med TPOT", "p99 TPOT", "med ITL", "med E2EL"]


def cmd_serve(a: argparse.Namespace) -> int:
    from jevons.bench.datasets import attach_text, token_pool
    from jevons.bench.serve_client import ServeTarget, fetch_model_name, run_benchmark
    from jevons.bench.workload import dataset_from_args, describe, describe_text

    threads = resolve_threads(a.threads)
    slos = parse_goodput(a.goodput)
    tok = _load_tokenizer(a.tokenizer or a.model)
    pool = token_pool(tok.vocab_size, tok.special_token_ids, tok)
    # Each rate gets its own seeded draw (seed + index): a rate must not run on
    # prompts the previous rate left in a prefix cache. Both servers get the same draws.
    draws = [attach_text(dataset_from_args(argparse.Namespace(**(vars(a) | {"seed": a.seed + i})), pool, tok), tok)
             for i in range(len(a.request_rate))]
    count = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731

    servers = _servers(a, draws, threads)
    results: dict[str, list[dict[str, Any]]] = {}
    for name, server, _how in servers:
        with server as handle:
            url = handle if isinstance(handle, str) else handle.base_url
            model = a.served_model_name if name == "jevons" and a.served_model_name else None
            model = model or asyncio.run(fetch_model_name(url, a.api_key))
            target = ServeTarget(url, model, a.endpoint, a.api_key if name == "jevons" else None)
            results[name] = []
            for i, (rate, reqs) in enumerate(zip(a.request_rate, draws)):
                rs, duration = asyncio.run(run_benchmark(
                    target, reqs, rate, a.burstiness, a.max_concurrency, a.seed + i, a.request_timeout,
                    count_tokens=count, progress=not a.no_progress, desc=f"{name} @ {rate:g} req/s"))
                m = calculate_metrics(rs, duration, slos)
                m |= {"request_rate": rate, "burstiness": a.burstiness, "max_concurrency": a.max_concurrency,
                      "errors": sorted({r.error for r in rs if not r.success})[:5]}
                results[name].append(m)

    print(f"serve: {describe_text(a)}, endpoint {a.endpoint}, burstiness {a.burstiness}, "
          f"max concurrency {a.max_concurrency or 'none'}, {threads} threads; latencies in ms")
    for name, _srv, how in servers:
        print()
        print(table(HEADERS + (["goodput"] if slos else []), _rows(results[name], bool(slos)),
                    title=f"{name}  ({how})"))
        for m in results[name]:
            for err in m["errors"]:
                print(f"  error @ {m['request_rate']:g} req/s: {err}")
    ratios = _ratios(results) if len(results) == 2 else None
    if ratios:
        print()
        print(table(["rate", "out tok/s", "med TTFT", "med TPOT", "med E2EL"],
                    [[r["request_rate"], r["output_throughput"], r["median_ttft_ms"], r["median_tpot_ms"],
                      r["median_e2el_ms"]] for r in ratios],
                    title="jevons / llama.cpp (throughput: higher is better; latencies: lower is better)"))
    plot = a.plot or (str(Path(a.json).with_suffix(".png")) if a.json and len(a.request_rate) > 1 else None)
    if plot:
        from jevons.bench.plot import plot_sweep

        print(f"\nplot: {plot_sweep(results, plot, title=f'bench serve: {a.dataset}, {threads} threads')}")
    if a.json:
        write_json(a.json, {"benchmark": "serve", "workload": describe(a), "threads": threads,
                            "endpoint": a.endpoint, "goodput_slos_ms": slos,
                            "servers": {n: how for n, _s, how in servers}, "results": results, "ratios": ratios})
    return 0


def _ratios(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    mine, peer = results["jevons"], results["llama.cpp"]
    keys = ("output_throughput", "median_ttft_ms", "median_tpot_ms", "median_e2el_ms")
    return [{"request_rate": "inf" if math.isinf(j["request_rate"]) else j["request_rate"]}
            | {k: ratio(j[k], p[k]) for k in keys} for j, p in zip(mine, peer)]


def _servers(a: argparse.Namespace, draws: list[list[Any]], threads: int) -> list[tuple[str, Any, str]]:
    """(name, context manager yielding a URL or a launched server, how it was started)."""
    from jevons.bench.servers import jevons_server, llama_server

    servers: list[tuple[str, Any, str]] = []
    if a.base_url:
        servers.append(("jevons", _running(a.base_url), a.base_url))
    else:
        srv = jevons_server(engine_flags(a), threads, startup_timeout_s=a.startup_timeout)
        servers.append(("jevons", srv, " ".join(srv.cmd)))
    if a.compare:
        if a.peer_base_url:
            servers.append(("llama.cpp", _running(a.peer_base_url), a.peer_base_url))
        else:
            from jevons.bench.peers import find_llama_cpp
            from jevons.loader.resolve import resolve_model

            resolved = resolve_model(a.model)
            if resolved.format != "gguf":
                raise SystemExit(f"--compare launches llama-server, which needs a GGUF; {resolved.path} is not one")
            longest = max(r.prompt_len + r.output_len for reqs in draws for r in reqs) + 64  # + chat template, BOS
            ctx = -(-longest // 256) * 256
            srv = llama_server(find_llama_cpp(a.llama_cpp_dir), resolved.path, a.parallel or a.max_num_seqs, ctx,
                               threads, startup_timeout_s=a.startup_timeout)
            servers.append(("llama.cpp", srv, " ".join(srv.cmd)))
    return servers
