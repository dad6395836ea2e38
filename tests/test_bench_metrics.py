"""The online metrics on hand-made timings: vLLM's definitions of TTFT, TPOT,
ITL, E2EL, the throughputs, percentiles and goodput."""
from __future__ import annotations

import pytest

from jevons.bench.metrics import RequestResult, calculate_metrics, meets_slos, parse_goodput


def _results() -> list[RequestResult]:
    return [
        # 5 tokens: ttft 0.1, then 4 gaps of 0.05 -> e2el 0.3, tpot (0.3-0.1)/4 = 0.05
        RequestResult(True, prompt_len=10, output_tokens=5, ttft=0.1, latency=0.3, itl=[0.05] * 4),
        # 3 tokens in 2 chunks (the server batched two): one ITL gap, TPOT over tokens
        RequestResult(True, prompt_len=20, output_tokens=3, ttft=0.2, latency=0.6, itl=[0.4]),
        # one token: no TPOT, no ITL
        RequestResult(True, prompt_len=30, output_tokens=1, ttft=0.5, latency=0.5, itl=[]),
        RequestResult(False, prompt_len=40, error="HTTP 500"),
    ]


def test_per_request_tpot() -> None:
    r = _results()
    assert r[0].tpot == pytest.approx(0.05)
    assert r[1].tpot == pytest.approx(0.2)
    assert r[2].tpot is None


def test_calculate_metrics() -> None:
    m = calculate_metrics(_results(), duration_s=2.0)
    assert m["completed"] == 3 and m["failed"] == 1
    assert m["total_input_tokens"] == 60 and m["total_output_tokens"] == 9  # failed request not counted
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["output_throughput"] == pytest.approx(4.5)
    assert m["total_token_throughput"] == pytest.approx(34.5)
    assert m["mean_ttft_ms"] == pytest.approx(800 / 3)
    assert m["median_ttft_ms"] == pytest.approx(200)
    assert m["p99_ttft_ms"] == pytest.approx(200 + 0.98 * 300)  # linear interpolation, as numpy/vLLM
    assert m["std_ttft_ms"] == pytest.approx(169.967, rel=1e-4)
    # TPOT over requests with > 1 token only
    assert m["mean_tpot_ms"] == pytest.approx(125) and m["median_tpot_ms"] == pytest.approx(125)
    # ITL over every gap of every request, flattened: four 50s and one 400
    assert m["mean_itl_ms"] == pytest.approx(120) and m["median_itl_ms"] == pytest.approx(50)
    assert m["p99_itl_ms"] == pytest.approx(50 + 0.96 * 350)
    assert m["mean_e2el_ms"] == pytest.approx(1400 / 3) and m["median_e2el_ms"] == pytest.approx(500)
    assert "request_goodput" not in m


def test_percentiles_and_empty() -> None:
    m = calculate_metrics([RequestResult(False)], 1.0, percentiles=(50.0, 90.0, 99.9))
    assert m["completed"] == 0 and m["p99_9_e2el_ms"] == 0.0 and m["p90_ttft_ms"] == 0.0
    with pytest.raises(ValueError):
        calculate_metrics([], 0.0)


def test_goodput() -> None:
    slos = parse_goodput(["ttft:250", "tpot:100"])
    assert slos == {"ttft": 250.0, "tpot": 100.0}
    r = _results()
    # r0: ttft 100, tpot 50 -> good; r1: tpot 200 -> bad; r2: ttft 500 -> bad
    assert [meets_slos(x, slos) for x in r[:3]] == [True, False, False]
    # a one-token request's TPOT counts as 0
    assert meets_slos(r[2], {"tpot": 0.0})
    m = calculate_metrics(r, 2.0, slos)
    assert m["request_goodput"] == pytest.approx(0.5)
    assert calculate_metrics(r, 2.0, {"e2el": 500})["request_goodput"] == pytest.approx(1.0)  # r1 took 600


@pytest.mark.parametrize("bad", ["ttft", "foo:1", "ttft:-1", "tpot:x"])
def test_parse_goodput_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_goodput([bad])
