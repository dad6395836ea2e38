"""Prices: cache-hit split, output incl. reasoning, UTC windows crossing midnight, overrides."""
from datetime import datetime, timedelta, timezone

import pytest

from jevons.cost.prices import PriceTable, TimeWindow, load_prices

UTC = timezone.utc


def at(h: int, m: int = 0) -> datetime:
    return datetime(2025, 3, 1, h, m, tzinfo=UTC)


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def test_default_prices_are_deepseek_list_prices(table):
    chat, reasoner = table.get("deepseek-chat").prices, table.get("deepseek-reasoner").prices
    assert (chat.input_cache_hit, chat.input_cache_miss, chat.output) == (0.07, 0.27, 1.10)
    assert (reasoner.input_cache_hit, reasoner.input_cache_miss, reasoner.output) == (0.14, 0.55, 2.19)
    assert table.machine_usd_per_hour == 0.0  # owned CPU: free by default


def test_aliases_and_case(table):
    assert table.get("DeepSeek-R1") is table.get("deepseek-reasoner")
    assert table.get("deepseek-v3") is table.get("deepseek-chat")
    assert table.get("nope") is None


def test_cache_hit_split(table):
    # R1 at peak: 600k hits, 400k misses, 100k output (reasoning included).
    c = table.price_request("deepseek-reasoner", 600_000, 400_000, 100_000, at=at(12))
    assert c.input_cache_hit == pytest.approx(600_000 * 0.14 / 1e6)
    assert c.input_cache_miss == pytest.approx(400_000 * 0.55 / 1e6)
    assert c.output == pytest.approx(100_000 * 2.19 / 1e6)
    assert c.total == pytest.approx(0.084 + 0.22 + 0.219)
    assert c.currency == "USD" and c.window is None
    # Same tokens all missing the cache cost more: the hit discount is real.
    all_miss = table.price_request("deepseek-reasoner", 0, 1_000_000, 100_000, at=at(12))
    assert all_miss.total - c.total == pytest.approx(600_000 * (0.55 - 0.14) / 1e6)


def test_usage_dict_shape_and_rounding(table):
    d = table.price_request("deepseek-chat", 1, 2, 3, at=at(12)).to_usage_dict()
    assert set(d) == {"currency", "input_cache_hit", "input_cache_miss", "output", "total"}
    assert d["total"] == round((0.07 + 2 * 0.27 + 3 * 1.10) / 1e6, 10)
    off = table.price_request("deepseek-chat", 1, 2, 3, at=at(20)).to_usage_dict()
    assert off["window"] == "off-peak"


@pytest.mark.parametrize("h,m,inside", [
    (16, 29, False), (16, 30, True), (20, 0, True), (23, 59, True),
    (0, 0, True), (0, 29, True), (0, 30, False), (12, 0, False), (16, 0, False),
])
def test_offpeak_window_crosses_midnight(table, h, m, inside):
    c = table.price_request("deepseek-chat", 1_000_000, 1_000_000, 1_000_000, at=at(h, m))
    factor = 0.5 if inside else 1.0
    assert c.output == pytest.approx(1.10 * factor)
    assert c.input_cache_hit == pytest.approx(0.07 * factor)
    assert (c.window == "off-peak") is inside


def test_r1_offpeak_uses_published_override_prices(table):
    c = table.price_request("deepseek-reasoner", 1_000_000, 1_000_000, 1_000_000, at=at(20))
    assert (c.input_cache_hit, c.input_cache_miss, c.output) == pytest.approx((0.035, 0.135, 0.55))


def test_timezone_aware_and_naive_times(table):
    tokyo = timezone(timedelta(hours=9))
    # 01:00 in Tokyo is 16:00 UTC (peak); 02:00 is 17:00 UTC (off-peak).
    assert table.price_request("deepseek-chat", 0, 0, 10**6, at=datetime(2025, 3, 2, 1, 0, tzinfo=tokyo)).window is None
    assert table.price_request("deepseek-chat", 0, 0, 10**6, at=datetime(2025, 3, 2, 2, 0, tzinfo=tokyo)).window == "off-peak"
    assert table.price_request("deepseek-chat", 0, 0, 10**6, at=datetime(2025, 3, 2, 17, 0)).window == "off-peak"


def test_window_forms():
    day = TimeWindow("day", 9 * 60, 17 * 60)
    assert day.contains(at(9)) and day.contains(at(16, 59)) and not day.contains(at(17))
    always = TimeWindow("all", 0, 0)
    assert always.contains(at(3)) and always.contains(at(23, 59))


def test_toml_file_discount_currency_and_overrides(tmp_path):
    f = tmp_path / "prices.toml"
    f.write_text("""
[machine]
usd_per_hour = 1.5
[models.tiny]
currency = "EUR"
input_cache_hit = 0.01
input_cache_miss = 0.1
output = 0.2
[[models.tiny.windows]]
name = "night"
start = "22:00"
end = "06:00"
discount = 0.25
""")
    t = load_prices(f)
    assert t.machine_usd_per_hour == 1.5
    c = t.price_request("tiny", 0, 0, 1_000_000, at=at(23))
    assert c.currency == "EUR" and c.output == pytest.approx(0.15) and c.window == "night"
    # Explicit values beat the file; the window still scales the new list price.
    t2 = t.with_model("tiny", output=0.4)
    assert t2.price_request("tiny", 0, 0, 1_000_000, at=at(12)).output == pytest.approx(0.4)
    assert t2.price_request("tiny", 0, 0, 1_000_000, at=at(23)).output == pytest.approx(0.3)
    assert t.price_request("tiny", 0, 0, 1_000_000, at=at(12)).output == pytest.approx(0.2)  # unchanged
    assert load_prices(f, machine_usd_per_hour=3.0).machine_usd_per_hour == 3.0


def test_new_model_override_needs_all_components(table):
    t = table.with_model("smollm2-135m-instruct", input_cache_hit=0.0, input_cache_miss=0.01, output=0.02)
    assert t.price_request("smollm2-135m-instruct", 0, 10**6, 10**6, at=at(1)).total == pytest.approx(0.03)
    with pytest.raises(ValueError):
        table.with_model("other", output=1.0)


def test_errors(table, tmp_path):
    with pytest.raises(KeyError):
        table.price_request("unknown", 1, 1, 1)
    with pytest.raises(ValueError):
        table.price_request("deepseek-chat", -1, 0, 0)
    bad = tmp_path / "bad.toml"
    bad.write_text("[models.x]\noutput = 1.0\n")
    with pytest.raises(ValueError, match="lacks"):
        load_prices(bad)


def test_day6_revenue_arithmetic(table):
    """DeepSeek's day-6 theoretical revenue at R1 prices (see docs/cost.md)."""
    r1 = "deepseek-reasoner"
    peak = at(12)
    # Published rounded inputs: 608B input, 56.3% cache hits, 168B output.
    hit = 608e9 * 0.563
    c = table.price_request(r1, round(hit), round(608e9 - hit), round(168e9), at=peak)
    assert c.input_cache_hit == pytest.approx(47_922.56)
    assert c.input_cache_miss == pytest.approx(146_132.80)
    assert c.output == pytest.approx(367_920.0)
    assert c.total == pytest.approx(561_975.36)
    assert abs(c.total - 562_027) / 562_027 < 1e-4  # the published figure, within rounding
    cost_per_day = 226.75 * 8 * 2.0 * 24
    assert cost_per_day == 87_072.0
    assert round((562_027 - cost_per_day) / cost_per_day * 100) == 545


def test_money_is_exact_decimal(table):
    from decimal import Decimal

    # Float prices would give 1.10 * 3 / 1e6 = 3.3000000000000005e-06.
    c = table.price_request("deepseek-chat", 0, 0, 3, at=at(12))
    assert c.exact_output == Decimal("0.0000033") and c.output == 3.3e-06
    d = table.price_request("deepseek-chat", 7, 11, 13, at=at(12)).to_usage_dict()
    # Every number prints as a decimal of at most 10 places: no binary-float noise.
    for k in ("input_cache_hit", "input_cache_miss", "output", "total"):
        assert Decimal(repr(d[k])).as_tuple().exponent >= -10, (k, d[k])
    assert Decimal(repr(d["total"])) == Decimal("0.00001776")  # (7*0.07 + 11*0.27 + 13*1.10) / 1e6
    # A multiplier is applied in decimal: 1.10 * 0.75 = 0.825, not 0.8250000000000001.
    t = PriceTable.from_dict({"models": {"m": {"input_cache_hit": 0.07, "input_cache_miss": 0.27, "output": 1.10,
                                               "windows": [{"start": "00:00", "end": "00:00", "multiplier": 0.75}]}}})
    assert t.price_request("m", 0, 0, 10**6, at=at(3)).output == 0.825
    # Many small requests add up exactly.
    many = [table.price_request("deepseek-reasoner", 3, 5, 7, at=at(12)) for _ in range(1000)]
    assert sum(x.exact_total for x in many) == 1000 * Decimal("0.0000185")
