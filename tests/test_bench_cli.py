"""`jevons bench ...` parses; engine flags pass through to a launched server;
llama.cpp output parses; tables and thread settings behave."""
from __future__ import annotations

import argparse
import math
import os
import stat

import pytest

from jevons.bench.cli import parse_range
from jevons.bench.peers import find_llama_cpp, parse_batched_bench, parse_llama_bench
from jevons.bench.report import ratio, table
from jevons.bench.run_serve import engine_flags
from jevons.bench.threads import available_cores, resolve_threads
from jevons.cli import build_parser


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


def test_throughput_defaults() -> None:
    a = parse("throughput")
    assert a.bench_command == "throughput" and a.num_prompts == 64
    assert a.input_len == (64, 512) and a.output_len == (64, 256)
    assert a.dataset == "random" and a.seed == 0 and a.threads is None and callable(a.func)


def test_latency_defaults_and_compare() -> None:
    a = parse("latency", "--dtype", "bfloat16", "--compare", "--llama-cpp-dir", "/x", "--threads", "2")
    assert (a.prompt_len, a.batch_size, a.output_len, a.decode_prompt_len) == (512, 32, 128, 128)
    assert a.compare and a.llama_cpp_dir == "/x" and a.threads == 2 and a.dtype == "bfloat16"


def test_serve_args() -> None:
    a = parse("serve", "--base-url", "http://127.0.0.1:9", "--request-rate", "1", "2.5", "inf",
              "--max-concurrency", "8", "--goodput", "ttft:500", "tpot:50", "--dataset", "multi-turn",
              "--input-len", "128:512", "--output-len", "128", "--json", "out.json", "--burstiness", "0.5")
    assert a.request_rate == [1.0, 2.5, math.inf]
    assert a.max_concurrency == 8 and a.goodput == ["ttft:500", "tpot:50"] and a.burstiness == 0.5
    assert a.input_len == (128, 512) and a.output_len == (128, 128) and a.dataset == "multi-turn"
    assert a.endpoint == "/v1/completions"
    d = parse("serve")
    assert d.request_rate == [math.inf] and d.input_len == (128, 512) and d.output_len == (128, 128)


@pytest.mark.parametrize("argv", [["serve", "--request-rate", "0"], ["serve", "--request-rate", "x"],
                                  ["throughput", "--input-len", "9:3"], ["serve", "--dataset", "nope"]])
def test_bad_args_exit(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


def test_parse_range() -> None:
    assert parse_range("7") == (7, 7) and parse_range("1:9") == (1, 9)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_range("0")


def test_engine_flags_pass_through() -> None:
    a = parse("serve", "--model", "/m", "--dtype", "bfloat16", "--max-num-seqs", "16", "--no-prefix-caching")
    assert engine_flags(a) == ["--model", "/m", "--dtype", "bfloat16", "--no-prefix-caching", "--max-num-seqs", "16"]
    assert engine_flags(parse("serve")) == []


def test_parse_llama_bench() -> None:
    out = ('[\n{"build_commit": "x", "n_prompt": 512, "n_gen": 0, "avg_ts": 1234.5, "stddev_ts": 10.0,\n'
           '  "samples_ns": [1, 2], "samples_ts": [1200.0, 1269.0]},\n'
           ' {"build_commit": "x", "n_prompt": 0, "n_gen": 128, "avg_ts": 99.5, "stddev_ts": 1.5}\n]\n')
    rows = parse_llama_bench("some log line\n" + out)
    assert rows == [{"n_prompt": 512, "n_gen": 0, "avg_ts": 1234.5, "stddev_ts": 10.0, "samples_ts": [1200.0, 1269.0]},
                    {"n_prompt": 0, "n_gen": 128, "avg_ts": 99.5, "stddev_ts": 1.5, "samples_ts": [99.5]}]


def test_parse_batched_bench_jsonl_and_markdown() -> None:
    jsonl = ('{"n_kv_max": 8256, "pp": 128, "tg": 128, "pl": 1, "n_kv": 256, "t_pp": 0.1, "speed_pp": 1280.0, '
             '"t_tg": 1.0, "speed_tg": 128.0, "t": 1.1, "speed": 232.7}\n'
             '{"n_kv_max": 8256, "pp": 128, "tg": 128, "pl": 32, "n_kv": 8192, "t_pp": 3.2, "speed_pp": 1280.0, '
             '"t_tg": 8.0, "speed_tg": 512.0, "t": 11.2, "speed": 731.4}\n')
    md = ("|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |\n"
          "|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|\n"
          "|   128 |    128 |    1 |    256 |    0.100 |  1280.00 |    1.000 |   128.00 |    1.100 |   232.73 |\n"
          "|   128 |    128 |   32 |   8192 |    3.200 |  1280.00 |    8.000 |   512.00 |   11.200 |   731.43 |\n")
    for text in (jsonl, md):
        rows = parse_batched_bench(text)
        assert [(r["pl"], r["speed_tg"], r["speed_pp"]) for r in rows] == [(1, 128.0, 1280.0), (32, 512.0, 1280.0)]
    with pytest.raises(ValueError):
        parse_batched_bench("nothing here")


def test_find_llama_cpp_explicit(tmp_path) -> None:
    bin_dir = tmp_path / "build" / "bin"
    bin_dir.mkdir(parents=True)
    for t in ("llama-bench", "llama-batched-bench", "llama-server"):
        f = bin_dir / t
        f.write_text("#!/bin/sh\n")
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    assert find_llama_cpp(str(tmp_path)) == bin_dir
    with pytest.raises(FileNotFoundError):
        find_llama_cpp(str(tmp_path / "nowhere"))


def test_table_and_ratio() -> None:
    out = table(["metric", "a", "b"], [["x", 1.5, 10], ["longer name", 1234567.0, float("nan")]], title="T")
    lines = out.splitlines()
    assert lines[0] == "T" and lines[1].startswith("metric") and "1,234,567.00" in out and lines[-1].endswith("-")
    assert len({len(line) for line in lines[1:]}) == 1  # aligned
    assert ratio(6.0, 2.0) == 3.0 and math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(None, 1.0))


def test_threads() -> None:
    assert resolve_threads(None) == available_cores() == resolve_threads(0)
    assert resolve_threads(3) == 3
    with pytest.raises(ValueError):
        resolve_threads(-1)
    assert available_cores() <= (os.cpu_count() or 1)


def _fake_tool(path, stdout: str) -> None:
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{stdout}EOF\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_peer_latency_with_fake_binaries(tmp_path) -> None:
    """The --compare plumbing: commands carry the same threads, samples land
    under the right metric, batched-bench repeats."""
    from jevons.bench.run_offline import _peer_latency

    _fake_tool(tmp_path / "llama-bench",
               '[{"n_prompt": 512, "n_gen": 0, "avg_ts": 150.0, "samples_ts": [100.0, 200.0]},\n'
               ' {"n_prompt": 0, "n_gen": 128, "avg_ts": 40.0, "samples_ts": [40.0, 40.0]}]\n')
    _fake_tool(tmp_path / "llama-batched-bench",
               '{"pp": 128, "tg": 128, "pl": 1, "speed_pp": 90.0, "speed_tg": 35.0, "t_pp": 1, "t_tg": 1}\n'
               '{"pp": 128, "tg": 128, "pl": 32, "speed_pp": 140.0, "speed_tg": 170.0, "t_pp": 1, "t_tg": 1}\n')
    _fake_tool(tmp_path / "llama-server", "")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    a = parse("latency", "--model", str(gguf), "--llama-cpp-dir", str(tmp_path), "--num-iters", "2")
    peer = _peer_latency(a, threads=2)
    assert peer["samples"] == {"prefill_tok_s": [100.0, 200.0], "decode_b1_tok_s": [40.0, 40.0],
                               "decode_b1_batched_tok_s": [35.0, 35.0], "decode_bB_tok_s": [170.0, 170.0]}
    bench_cmd, batched_cmd = peer["commands"]
    assert " -p 512 -n 128 -t 2 -r 2 " in bench_cmd + " "
    assert "-npp 128 -ntg 128 -npl 1,32 -t 2 -tb 2" in batched_cmd and "--no-repack" not in batched_cmd
