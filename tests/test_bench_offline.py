"""`bench throughput` and `bench latency` run end to end on a tiny model."""
from __future__ import annotations

import json
import math

from conftest import assert_no_leaks

from jevons.bench.datasets import random_dataset
from jevons.bench.latency import run_latency
from jevons.bench.throughput import engine_token_pool, run_throughput
from jevons.cli import main


def test_throughput_api(tiny_llama) -> None:
    from jevons import LLM

    llm = LLM(model=str(tiny_llama), dtype="float32", max_num_seqs=8, progress=False)
    pool = engine_token_pool(llm)
    assert pool and all(t not in llm.get_tokenizer().special_token_ids for t in pool)
    reqs = random_dataset(6, (4, 24), (2, 9), pool, seed=3)
    res = run_throughput(llm, reqs, progress=False)
    assert res.num_requests == 6
    assert res.total_input_tokens == sum(r.prompt_len for r in reqs)
    assert res.total_output_tokens == sum(r.output_len for r in reqs)  # ignore_eos: every token generated
    assert res.output_tok_s == res.total_output_tokens / res.elapsed_s > 0
    assert_no_leaks(llm)

    lat = run_latency(llm, pool, prefill_len=16, batch_size=3, decode_prompt_len=4, decode_len=5, num_iters=2,
                      progress=False)
    assert len(lat.prefill_tok_s) == len(lat.decode_b1_tok_s) == len(lat.decode_bB_tok_s) == 2
    assert all(v > 0 and math.isfinite(v) for v in lat.summary().values())
    assert set(lat.samples()) == set(lat.summary())
    assert_no_leaks(llm)


def test_throughput_cli(tiny_llama, tmp_path, capsys) -> None:
    out = tmp_path / "t.json"
    rc = main(["bench", "throughput", "--model", str(tiny_llama), "--num-prompts", "5", "--input-len", "4:16",
               "--output-len", "3:6", "--threads", "1", "--no-progress", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "output tok/s" in printed and "requests/s" in printed
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "throughput" and doc["engine"]["threads"] == 1
    assert doc["results"]["num_requests"] == 5 and doc["results"]["output_tok_s"] > 0
    assert doc["workload"]["input_len"] == [4, 16] and "machine" in doc


def test_latency_cli(tiny_llama, tmp_path, capsys) -> None:
    out = tmp_path / "l.json"
    rc = main(["bench", "latency", "--model", str(tiny_llama), "--prompt-len", "16", "--batch-size", "3",
               "--decode-prompt-len", "4", "--output-len", "4", "--num-iters", "1", "--no-progress",
               "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "prefill tok/s (P=16)" in printed and "decode tok/s, batch 3" in printed
    doc = json.loads(out.read_text())
    assert doc["llama_cpp"] is None and doc["ratios"] is None
    assert doc["jevons"]["median"]["prefill_tok_s"] > 0 and doc["jevons"]["best"]["decode_bB_tok_s"] > 0
