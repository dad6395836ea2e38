"""Which price a server bills at: lookup by the requested name, then the other
served names; flags override the file, or price a model the file lacks."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from jevons.cost.prices import PriceTable
from jevons.server.billing import PriceOverrides, ServerPricing, summary_finish_reason

NOON = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
NIGHT = datetime(2025, 3, 1, 20, 0, tzinfo=timezone.utc)  # DeepSeek's off-peak


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def bill(p: ServerPricing, names, at=NOON):
    return p.price(names, 600_000, 400_000, 100_000, at)  # 1M prompt tokens, 60% hits, 100k out


def test_default_table_by_served_name_and_alias(table):
    p = ServerPricing(table, PriceOverrides())
    cost = bill(p, ["deepseek-r1"])  # an alias of deepseek-reasoner
    assert cost.model == "deepseek-reasoner" and cost.total == pytest.approx(0.084 + 0.22 + 0.219)
    # The requested name is unknown; the next served name has a price.
    assert bill(p, ["./my-checkpoint", "deepseek-chat"]).model == "deepseek-chat"
    assert bill(p, ["deepseek-r1"], NIGHT).window == "off-peak"
    assert bill(p, ["unknown-model"]) is None


def test_flags_override_file_components_and_keep_windows(table):
    p = ServerPricing(table, PriceOverrides(output=3.0, currency="EUR"))
    cost = bill(p, ["deepseek-chat"])
    assert cost.currency == "EUR"
    assert (cost.input_cache_hit, cost.output) == (pytest.approx(0.042), pytest.approx(0.3))
    assert bill(p, ["deepseek-chat"], NIGHT).output == pytest.approx(0.15)  # 50% off-peak still applies
    assert bill(p, ["unknown-model"]) is None  # partial flags cannot price a model alone


def test_flags_alone_price_the_served_model():
    p = ServerPricing(None, PriceOverrides(1.0, 2.0, 4.0))
    cost = bill(p, ["tiny", "tiny-alias"])
    assert (cost.model, cost.currency) == ("tiny", "USD")
    assert cost.to_usage_dict() == {"currency": "USD", "input_cache_hit": 0.6, "input_cache_miss": 0.8,
                                    "output": 0.4, "total": 1.8}
    assert reasoning_is_output(p)


def reasoning_is_output(p: ServerPricing) -> bool:
    # completion_tokens already include reasoning tokens; there is no separate rate.
    return bill(p, ["tiny"]).output == p.price(["tiny"], 0, 0, 100_000, NOON).total


def test_no_prices_means_no_cost():
    assert not ServerPricing(None, PriceOverrides()).enabled
    assert bill(ServerPricing(None, PriceOverrides()), ["tiny"]) is None
    with pytest.raises(ValueError, match="all of"):
        ServerPricing(None, PriceOverrides(output=1.0))


def test_summary_finish_reason():
    assert summary_finish_reason(["stop"]) == "stop"
    assert summary_finish_reason(["stop", "length", "stop"]) == "stop,length"
    assert summary_finish_reason([None, "stop"]) == "abort,stop"
