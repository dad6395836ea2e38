"""DeepSeek's day-6 inference figures (Feb/Mar 2025) through the planner's cost accounting."""
import pytest

from jevons.cost.calibrate import Measured, apply_measured
from jevons.cost.hardware import get_hardware
from jevons.cost.planner import Workload, plan
from jevons.cost.roofline import Deployment
from jevons.loader.presets import get_preset

NODES, GPUS_PER_NODE, USD_PER_GPU_HOUR = 226.75, 8, 2.0
INPUT_TOKENS, HIT_RATE, OUTPUT_TOKENS = 608e9, 0.563, 168e9
PREFILL_PER_NODE, DECODE_PER_NODE = 73.7e3, 14.8e3


def test_daily_cost():
    assert NODES * GPUS_PER_NODE * USD_PER_GPU_HOUR * 24 == 87_072


def test_measured_rates_account_for_the_fleet():
    """Charging each phase its node-time at DeepSeek's measured per-node rates
    recovers their fleet size and daily cost to within 0.1%."""
    node_seconds = INPUT_TOKENS / PREFILL_PER_NODE + OUTPUT_TOKENS / DECODE_PER_NODE
    assert node_seconds / 86_400 == pytest.approx(NODES, rel=1e-3)
    # The same through the planner: one decode instance (18 nodes, EP144), calibrated.
    dep = Deployment(get_hardware("h800"), gpus=144, precision="fp8")
    wl = Workload(input_len=4383, output_len=1211, cache_hit_rate=HIT_RATE)
    roof = plan(get_preset("deepseek-r1"), dep, wl, "deepseek-r1")
    p = apply_measured(roof, Measured(output_tok_s=DECODE_PER_NODE * 18, input_tok_s=PREFILL_PER_NODE * 18))
    assert p.decode_tok_s_per_node == pytest.approx(DECODE_PER_NODE)
    assert p.usd_per_million_output_tokens == pytest.approx(16 / 3600 / 14_800 * 1e6)  # $0.300
    assert p.usd_per_million_input_tokens == pytest.approx(16 / 3600 / 73_700 * 1e6)   # $0.0603
    daily = (INPUT_TOKENS * p.usd_per_million_input_tokens + OUTPUT_TOKENS * p.usd_per_million_output_tokens) / 1e6
    assert daily == pytest.approx(87_072, rel=1e-3)
    # The roofline is a ceiling: 3-6x above what the production fleet averaged.
    assert 3 < roof.decode_tok_s_per_node / DECODE_PER_NODE < 6
    assert 3 < roof.input_tok_s_per_node / PREFILL_PER_NODE < 6
