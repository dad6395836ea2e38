"""Serving cost: machine $/hour over tokens produced."""
import pytest

from jevons.cost.serving import ServingCostMeter, usd_per_million_tokens


def test_usd_per_million_tokens():
    # 8 H800 at $2/h = $16/h producing 14.8k tok/s -> $0.30 per million
    assert usd_per_million_tokens(16.0, 14_800, 1.0) == pytest.approx(16 / 3600 / 14_800 * 1e6)
    assert usd_per_million_tokens(16.0, 0, 10.0) is None


def test_meter_counts_idle_time():
    now = [100.0]
    meter = ServingCostMeter(usd_per_hour=3.6, clock=lambda: now[0])
    meter.add(500)
    now[0] += 10.0
    snap = meter.snapshot()
    assert snap.output_tokens == 500 and snap.usd_spent == pytest.approx(0.01)
    assert snap.usd_per_million_output_tokens == pytest.approx(0.01 / 500 * 1e6)
    now[0] += 10.0  # idle: same tokens, more money
    assert meter.snapshot().usd_per_million_output_tokens == pytest.approx(0.02 / 500 * 1e6)


def test_meter_reads_an_engine_counter_from_its_baseline():
    now, generated = [0.0], [1_000]  # tokens made before serving began do not count
    meter = ServingCostMeter(usd_per_hour=36.0, clock=lambda: now[0], tokens=lambda: generated[0])
    assert meter.snapshot().usd_per_million_output_tokens is None
    generated[0] += 2_000
    now[0] += 1.0
    snap = meter.snapshot()
    assert snap.output_tokens == 2_000 and snap.usd_spent == pytest.approx(0.01)
    assert snap.usd_per_million_output_tokens == pytest.approx(0.01 / 2_000 * 1e6)
