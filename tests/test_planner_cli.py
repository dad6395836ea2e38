"""`jevons plan` and `jevons usage` through their argparse parsers, and --calibrate."""
import argparse
import io
import json

import pytest

from jevons.cost.calibrate import parse_measured
from jevons.cost.ledger import Ledger, LedgerEntry
from jevons.cost.plan_cli import add_plan_parser, run_plan
from jevons.cost.usage_cli import add_usage_parser
from jevons.loader.presets import get_preset


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jevons")
    sub = parser.add_subparsers(dest="command")
    add_plan_parser(sub)
    add_usage_parser(sub)
    return parser.parse_args(list(argv))


def run(*argv: str) -> tuple[int, str]:
    args = parse(*argv)
    out = io.StringIO()
    return args.func(args, out=out), out.getvalue()


def test_plan_json_for_deepseek_v3_on_h200():
    args = parse("plan", "deepseek-v3", "--hardware", "h200", "--gpus", "8", "--json")
    assert args.func is run_plan
    code, text = run("plan", "deepseek-v3", "--hardware", "h200", "--gpus", "8", "--json")
    assert code == 0
    data = json.loads(text)
    assert data["kv_bytes_per_token"] == 70_272
    assert data["precision"] == "fp8"  # the checkpoint's own precision by default
    assert data["attention"] == "MLA" and data["fits"] is True
    assert data["max_concurrent_sequences"] > 1000
    assert data["usd_per_hour"] == 16.0 and data["source"] == "roofline"


def test_plan_table_for_distill_7b_on_h100():
    code, text = run("plan", "deepseek-r1-distill-qwen-7b", "--hardware", "h100",
                     "--target-tok-s", "40", "--users", "500")
    assert code == 0
    for label in ("weight memory", "KV bytes/token", "max concurrent seqs", "decode, batch 1",
                  "prefill", "GPUs for target", "$/M input tokens", "$/M output tokens"):
        assert label in text
    assert "57,344" in text


def test_plan_from_config_path_and_overrides(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(get_preset("smollm2-135m-instruct")))
    code, text = run("plan", str(tmp_path), "--hardware", "cpu", "--bandwidth-gbs", "40",
                     "--tflops", "1.0", "--memory-gb", "16", "--usd-per-gpu-hour", "0.05",
                     "--precision", "bf16", "--json")
    data = json.loads(text)
    assert code == 0 and data["gpus"] == 1 and data["usd_per_hour"] == 0.05
    # 40 GB/s over 134.5M params x 2 bytes (the tied head streams the whole table) + KV.
    assert 100 < data["decode_tok_s_per_user_batch1"] < 200


def test_plan_errors_return_2(capsys):
    assert run("plan", "no-such-model")[0] == 2
    assert "unknown model preset" in capsys.readouterr().err
    assert run("plan", "qwen2-7b", "--hardware", "tpu")[0] == 2


def test_unusable_plan_json_has_no_infinity():
    code, text = run("plan", "deepseek-v3", "--hardware", "h800", "--gpus", "8", "--json")
    data = json.loads(text)  # strict JSON: inf would not parse back as a number here
    assert code == 0 and data["fits"] is False and data["usd_per_million_output_tokens"] is None


def test_calibrate_replaces_roofline(tmp_path):
    results = tmp_path / "bench.json"
    results.write_text(json.dumps({"results": [
        {"output_throughput": 500.0, "input_throughput": 4000.0, "mean_tpot_ms": 50.0, "max_concurrency": 16},
        {"output_throughput": 900.0, "input_throughput": 5000.0, "mean_tpot_ms": 100.0, "max_concurrency": 32},
    ]}))
    code, text = run("plan", "qwen2-7b", "--hardware", "h100", "--usd-per-gpu-hour", "3.6",
                     "--cache-hit", "0.5", "--calibrate", str(results), "--json")
    data = json.loads(text)
    assert code == 0 and data["source"] == "measured"
    assert data["decode_tok_s_aggregate"] == 900.0 and data["decode_batch"] == 32
    assert data["decode_tok_s_per_user"] == pytest.approx(10.0)
    assert data["usd_per_million_output_tokens"] == pytest.approx(3.6 / 3600 / 900 * 1e6)
    assert data["usd_per_million_input_tokens"] == pytest.approx(3.6 / 3600 / 5000 * 1e6)
    assert data["prefill_tok_s"] == pytest.approx(2500.0)


def test_parse_measured_reads_bench_serve_results_per_server():
    data = {"results": {"jevons": [{"output_throughput": 299.3, "mean_tpot_ms": 160.0},
                                   {"output_throughput": 120.0}],
                        "llama.cpp": [{"output_throughput": 60.2}]}}
    m = parse_measured(data)
    assert m.output_tok_s == 299.3 and m.per_user_tok_s == 1000.0 / 160.0
    assert parse_measured({"results": {"vllm": [{"output_throughput": 5.0}]}}).output_tok_s == 5.0


def test_parse_measured_aliases():
    m = parse_measured({"decode_tok_s": 12.5, "prefill_tok_s": 300})
    assert (m.output_tok_s, m.input_tok_s) == (12.5, 300.0)
    with pytest.raises(ValueError):
        parse_measured({"completed": 10})
    with pytest.raises(ValueError):
        parse_measured([])


def _ledger(path):
    with Ledger(path) as led:
        for i, (key, model) in enumerate([("a", "m1"), ("a", "m1"), ("b", "m2")]):
            led.record(LedgerEntry(f"r{i}", key, model, 100, 20, 50, 10, 0.5, "USD", 1.0, "stop",
                                   1740787200.0 + 100 * i))


def test_usage_table_json_csv(tmp_path):
    db = tmp_path / "ledger.db"
    _ledger(db)
    code, text = run("usage", "--ledger", str(db))
    assert code == 0 and "2025-03-01" in text and text.splitlines()[0].split()[:3] == ["key", "model", "day"]
    code, text = run("usage", "--ledger", str(db), "--by", "model", "--json", "--usd-per-hour", "3.6")
    rows = json.loads(text)
    assert [(r["model"], r["requests"]) for r in rows] == [("m1", 2), ("m2", 1)]
    # m1: 100 output tokens over 101 s (first start 1 s before the first finish) at $3.6/h
    assert rows[0]["serving_usd_per_million_output"] == pytest.approx(3.6 * 101 / 3600 / 100 * 1e6)
    code, _ = run("usage", "--ledger", str(db), "--by", "key", "--csv", str(tmp_path / "u.csv"),
                  "--since", "2025-03-01T00:00:00")
    assert code == 0 and (tmp_path / "u.csv").read_text().startswith("key,currency,requests")
    assert run("usage", "--ledger", str(tmp_path / "missing.db"))[0] == 2
    assert run("usage", "--ledger", str(db), "--by", "week")[0] == 2


def test_cost_plot_script(tmp_path):
    from jevons.cost.plot_cost import main
    out = main(str(tmp_path / "curve.png"))
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_cost_falls_with_concurrency():
    from jevons.cost.hardware import get_hardware
    from jevons.cost.planner import Workload, output_cost_curve
    from jevons.cost.roofline import Deployment
    rows = output_cost_curve(get_preset("qwen2-7b"), Deployment(get_hardware("h100")), Workload(),
                             [1, 2, 8, 64, 512, 10_000])
    assert [b for b, _, _ in rows] == [1, 2, 8, 64, 512]  # 10,000 does not fit
    costs = [c for _, _, c in rows]
    assert costs == sorted(costs, reverse=True)


@pytest.mark.parametrize("argv", [
    ("deepseek-v3", "--hardware", "h200", "--gpus", "8"),
    ("deepseek-r1-distill-qwen-7b", "--hardware", "h100", "--target-tok-s", "60", "--users", "2000"),
])
def test_docs_show_current_planner_output(argv):
    """docs/cost.md quotes these two plans verbatim; regenerate them if this fails."""
    from pathlib import Path
    docs = (Path(__file__).resolve().parents[1] / "docs" / "cost.md").read_text()
    _, text = run("plan", *argv)
    assert text.strip() in docs
