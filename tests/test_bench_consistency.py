"""`bench consistency` runs end to end on a tiny model: the report's shape,
the prefix-cache hit of variant (b), and full identity with --deterministic."""
from __future__ import annotations

import json

import pytest

from jevons.bench.consistency import FILLERS, PROMPTS, check, fillers, first_diff
from jevons.cli import build_parser, main

ARGS = ["--num-prompts", "3", "--max-tokens", "6", "--batch-extra", "4", "--seeded-prompts", "2",
        "--chunk-tokens", "8", "--threads", "1", "--no-progress"]


def test_first_diff_and_fillers() -> None:
    assert first_diff([1, 2, 3], [1, 2, 3]) is None
    assert first_diff([1, 2, 3], [1, 5, 3]) == 1
    assert first_diff([1, 2, 3], [1, 2]) == 2
    assert len(PROMPTS) == 12 and len(set(PROMPTS)) == 12 and len(set(FILLERS)) == len(FILLERS) >= 32
    assert len(set(fillers(40))) == 40


def test_defaults() -> None:
    a = build_parser().parse_args(["bench", "consistency"])
    assert (a.num_prompts, a.max_tokens, a.batch_extra, a.seeded_prompts, a.head_tokens) == (12, 48, 32, 3, 16)
    assert not a.check and not a.deterministic and a.dtype == "auto" and a.quantization == "auto"
    a = build_parser().parse_args(["bench", "consistency", "--deterministic", "-q", "int8", "--dtype", "float32"])
    assert a.deterministic and a.quantization == "int8" and a.dtype == "float32"
    for bad in ("0", "13", "x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["bench", "consistency", "--num-prompts", bad])


def _run(tiny_llama, tmp_path, capsys, *extra: str) -> tuple[int, dict, str]:
    out = tmp_path / "c.json"
    rc = main(["bench", "consistency", "--model", str(tiny_llama), "--dtype", "float32", *ARGS, *extra,
               "--json", str(out)])
    return rc, json.loads(out.read_text()), capsys.readouterr().out


def test_report(tiny_llama, tmp_path, capsys) -> None:
    rc, doc, printed = _run(tiny_llama, tmp_path, capsys)
    assert rc == 0  # a measurement, whatever it finds
    assert doc["benchmark"] == "consistency" and doc["engine"]["deterministic"] is False and "machine" in doc
    st = doc["settings"]
    assert st["batch_size"] == 7 and sorted(st["batch_positions"]) == sorted(set(st["batch_positions"]))
    assert len(doc["prompts"]) == 3 and len(doc["seeded"]) == 2 and len(doc["fillers"]) == 4
    for r in doc["prompts"] + doc["seeded"]:
        assert set(r["token_ids"]) == {"a", "b", "c", "d"} and set(r["first_diff"]) == {"b", "c", "d"}
        assert all(len(t) == 6 for t in r["token_ids"].values())  # ignore_eos: every token generated
        assert r["num_cached_tokens"]["a"] == 0 and r["num_cached_tokens"]["c"] == 0  # cold
        assert r["num_cached_tokens"]["b"] > 0  # right after (a): a prefix-cache hit
        for v, d in r["first_diff"].items():
            assert d == first_diff(r["token_ids"]["a"], r["token_ids"][v])
    s = doc["summary"]
    assert s["num_prompts"] == 3 and s["head_tokens"] == 6 and s["cache_hits_b"] == 3
    assert 0 <= s["identical_all"] <= s["identical_abc"] <= s["head_identical_abc"] <= 3
    assert doc["check"]["passed"] == (check(doc, False) == [])
    assert "greedy (temperature 0)" in printed and "seeded sampling" in printed
    assert "first 6 tokens identical in (a)(b)(c)" in printed and "(b) prefix-cache hits: 3/3" in printed


def test_deterministic_is_identical(tiny_llama, tmp_path, capsys) -> None:
    rc, doc, printed = _run(tiny_llama, tmp_path, capsys, "--deterministic", "--check")
    s = doc["summary"]
    assert doc["engine"]["deterministic"] is True
    assert s["identical_all"] == 3 and s["seeded_identical_all"] == 2, doc["prompts"]
    assert all(r["identical_all"] for r in doc["prompts"] + doc["seeded"])
    assert rc == 0 and doc["check"] == {"failures": [], "passed": True} and "check: passed" in printed


def test_check_fails_on_a_difference() -> None:
    s = {"num_prompts": 2, "head_tokens": 4, "max_tokens": 8, "head_identical_abc": 2, "identical_all": 1,
         "seeded_identical_all": 1, "seeded_prompts": 1, "prefix_caching": True, "cache_hits_b": 2}
    assert check({"summary": s}, deterministic=False) == []
    assert len(check({"summary": s}, deterministic=True)) == 1
    assert check({"summary": s | {"seeded_identical_all": 0}}, deterministic=True)[-1].startswith("--deterministic")
    assert check({"summary": s | {"head_identical_abc": 1}}, deterministic=False)
    assert check({"summary": s | {"cache_hits_b": 1}}, deterministic=False)
