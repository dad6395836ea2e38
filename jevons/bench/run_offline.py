"""The offline commands: `jevons bench throughput` and `jevons bench latency`
(the latter optionally beside llama-bench / llama-batched-bench)."""
from __future__ import annotations

import argparse
import gc
from typing import Any

from jevons.bench.report import ratio, table, write_json
from jevons.bench.threads import apply_threads


def _load(a: argparse.Namespace, **override: Any):
    from jevons import LLM
    from jevons.cli_args import engine_config

    return LLM(config=engine_config(a, **override), progress=not a.no_progress)


def _engine_desc(llm: Any, a: argparse.Namespace, threads: int) -> dict[str, Any]:
    return {"model": llm.engine.model_name, "model_path": str(llm.engine.model_path),
            "dtype": str(llm.engine.dtype).removeprefix("torch."), "threads": threads,
            "quantization": llm.engine.quantization,  # "auto" resolved
            "max_num_seqs": llm.engine.config.scheduler.max_num_seqs,
            "max_num_batched_tokens": llm.engine.config.scheduler.max_num_batched_tokens}


def _label(engine: dict[str, Any]) -> str:
    q = engine["quantization"]
    return f"{engine['model']} {engine['dtype']}" + ("" if q in (None, "none") else f" {q}")


def cmd_throughput(a: argparse.Namespace) -> int:
    from jevons.bench.throughput import engine_token_pool, run_throughput, warm_up
    from jevons.bench.workload import dataset_from_args, describe, describe_text

    threads = apply_threads(a.threads)
    llm = _load(a)
    pool = engine_token_pool(llm)
    reqs = dataset_from_args(a, pool, llm.get_tokenizer())
    warm_up(llm, pool)
    res = run_throughput(llm, reqs, progress=not a.no_progress)
    engine = _engine_desc(llm, a, threads)
    print(table(["metric", "value"], [
        ["requests", res.num_requests], ["elapsed (s)", res.elapsed_s],
        ["input tokens", res.total_input_tokens], ["output tokens", res.total_output_tokens],
        ["requests/s", res.requests_per_s], ["input tok/s", res.input_tok_s],
        ["output tok/s", res.output_tok_s], ["total tok/s", res.total_tok_s],
    ], title=f"throughput: {_label(engine)}, {threads} threads, {describe_text(a)}"))
    if a.json:
        write_json(a.json, {"benchmark": "throughput", "engine": engine, "workload": describe(a),
                            "results": res.to_dict()})
    return 0


def _peer_latency(a: argparse.Namespace, threads: int) -> dict[str, Any]:
    """llama-bench (ppP, tgN) and llama-batched-bench (-npl 1,B) on the same GGUF;
    per metric, the tok/s of every repetition."""
    from jevons.bench.peers import find_llama_cpp, llama_batched_bench, llama_bench
    from jevons.loader.resolve import resolve_model

    resolved = resolve_model(a.model)
    if resolved.format != "gguf":
        raise SystemExit(f"--compare needs a GGUF model for llama.cpp; {resolved.path} is a {resolved.format} folder")
    bin_dir = find_llama_cpp(a.llama_cpp_dir)
    print(f"llama.cpp: {bin_dir}; running llama-bench and llama-batched-bench...", flush=True)
    lb = llama_bench(bin_dir, resolved.path, a.prompt_len, a.output_len, threads, repetitions=a.num_iters)
    batches = sorted({1, a.batch_size})
    bb = llama_batched_bench(bin_dir, resolved.path, a.decode_prompt_len, a.output_len, batches, threads,
                             repetitions=a.num_iters)
    pick = lambda p, g: next((r["samples_ts"] for r in lb.results if (r["n_prompt"], r["n_gen"]) == (p, g)), [])  # noqa: E731
    by_pl = lambda pl: [r["speed_tg"] for r in bb.results if r["pl"] == pl]  # noqa: E731
    return {"bin_dir": str(bin_dir), "commands": [lb.command_line(), bb.command_line() + f"   (x{a.num_iters})"],
            "llama_bench": lb.results, "llama_batched_bench": bb.results,
            "samples": {"prefill_tok_s": pick(a.prompt_len, 0), "decode_b1_tok_s": pick(0, a.output_len),
                        "decode_b1_batched_tok_s": by_pl(1), "decode_bB_tok_s": by_pl(a.batch_size)}}


def cmd_latency(a: argparse.Namespace) -> int:
    from jevons.bench.latency import best, median, run_latency
    from jevons.bench.throughput import engine_token_pool

    threads = apply_threads(a.threads)
    # B sequences must fit in one batch, or "decode at batch B" would not be.
    llm = _load(a, max_num_seqs=max(a.max_num_seqs, a.batch_size))
    engine = _engine_desc(llm, a, threads)
    res = run_latency(llm, engine_token_pool(llm), a.prompt_len, a.batch_size, a.decode_prompt_len,
                      a.output_len, a.num_iters, a.seed, progress=not a.no_progress,
                      structured=getattr(a, "structured", False))
    mine = res.samples()
    del llm
    gc.collect()  # free jevons's memory before the peer runs
    peer = _peer_latency(a, threads) if a.compare else None

    P, N, B = a.prompt_len, a.output_len, a.batch_size
    rows = [  # label, jevons key, peer key, peer measurement
        (f"prefill tok/s (P={P})", "prefill_tok_s", "prefill_tok_s", f"llama-bench pp{P}"),
        ("decode tok/s, batch 1", "decode_b1_tok_s", "decode_b1_tok_s", f"llama-bench tg{N}"),
        ("decode tok/s, batch 1", "decode_b1_tok_s", "decode_b1_batched_tok_s", "llama-batched-bench npl=1"),
        (f"decode tok/s, batch {B}", "decode_bB_tok_s", "decode_bB_tok_s", f"llama-batched-bench npl={B}"),
    ]
    ratios: dict[str, dict[str, float]] | None = None
    if peer is None:
        out = table(["metric", "jevons median", "jevons best"],
                    [[r[0], median(mine[r[1]]), best(mine[r[1]])] for i, r in enumerate(rows) if i != 2])
    else:
        ps = peer["samples"]
        ratios = {r[2]: {"median": ratio(median(mine[r[1]]), median(ps[r[2]])),
                         "best": ratio(best(mine[r[1]]), best(ps[r[2]]))} for r in rows}
        out = table(["metric", "jevons", "llama.cpp", "ratio", "jevons best", "llama.cpp best", "ratio best",
                     "peer measurement"],
                    [[r[0], median(mine[r[1]]), median(ps[r[2]]), ratios[r[2]]["median"], best(mine[r[1]]),
                      best(ps[r[2]]), ratios[r[2]]["best"], r[3]] for r in rows])
        out += "\n\nratio = jevons/llama.cpp, medians; best = fastest repetition of each"
        out += "\npeer commands:\n  " + "\n  ".join(peer["commands"])
    print(f"latency: {_label(engine)}, {threads} threads; prefill P={P}; "
          f"decode {N} tokens after a {a.decode_prompt_len}-token prompt; {a.num_iters} repetitions"
          + ("; decoding under a JSON schema (--structured)" if getattr(a, "structured", False) else ""))
    print(out)
    if a.json:
        write_json(a.json, {"benchmark": "latency", "engine": engine,
                            "settings": {"prompt_len": P, "batch_size": B, "decode_prompt_len": a.decode_prompt_len,
                                         "output_len": N, "num_iters": a.num_iters,
                                         "structured": getattr(a, "structured", False)},
                            "jevons": {"median": res.summary(), "best": {k: best(v) for k, v in mine.items()},
                                       "samples": mine},
                            "llama_cpp": peer, "ratios": ratios})
    return 0
