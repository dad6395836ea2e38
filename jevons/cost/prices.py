"""What a request is billed: per-model prices per million tokens, with UTC time windows.

Prices come from a TOML file (default_prices.toml documents the format), can be
overridden per model in code or by flags, and are applied per request as

    billed = hit_tokens * input_cache_hit + miss_tokens * input_cache_miss
             + completion_tokens * output          (all / 1e6)

where completion_tokens already include reasoning tokens: a model's thinking is
generated like any other output, so it is billed like any other output.

Money is exact (money.py): prices are the decimals written in the file, and
every amount is computed with decimal.Decimal and rounded to MONEY_DECIMALS
places; `Cost` keeps those Decimals and hands out the nearest floats for
callers that want numbers.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, time, timezone
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from jevons.cost.money import MONEY_DECIMALS, quantize, to_decimal, to_float

PER_MILLION = 1_000_000
# Billed amounts are exact decimals rounded to this many places, far below a cent.
USAGE_DECIMALS = MONEY_DECIMALS


@dataclass(frozen=True)
class ComponentPrices:
    """Prices per million tokens for the three billed components."""

    input_cache_hit: float
    input_cache_miss: float
    output: float

    def scaled(self, factor: float) -> "ComponentPrices":
        # In decimal: 1.10 * 0.75 is 0.825, not 0.8250000000000001.
        f = to_decimal(factor)
        return ComponentPrices(*(float(to_decimal(p) * f)
                                 for p in (self.input_cache_hit, self.input_cache_miss, self.output)))


def _minute_of_day(value: str | time) -> int:
    if isinstance(value, time):
        return value.hour * 60 + value.minute
    hours, _, minutes = str(value).partition(":")
    h, m = int(hours), int(minutes or 0)
    if not (0 <= h <= 24 and 0 <= m < 60) or h * 60 + m > 24 * 60:
        raise ValueError(f"bad time of day {value!r}; expected HH:MM")
    return (h * 60 + m) % (24 * 60)


@dataclass(frozen=True)
class TimeWindow:
    """A UTC time-of-day window [start, end) in minutes after midnight. When end <=
    start the window crosses midnight (16:30-00:30 covers 16:30..23:59 and 00:00..00:29);
    start == end means all day."""

    name: str
    start_minute: int
    end_minute: int
    multiplier: float = 1.0  # the fraction of the list price still charged
    overrides: dict[str, float] = field(default_factory=dict)  # component -> price

    def contains(self, at: datetime) -> bool:
        utc = _as_utc(at)
        minute = utc.hour * 60 + utc.minute
        if self.start_minute == self.end_minute:
            return True
        if self.start_minute < self.end_minute:
            return self.start_minute <= minute < self.end_minute
        return minute >= self.start_minute or minute < self.end_minute

    def apply(self, base: ComponentPrices) -> ComponentPrices:
        return dataclasses.replace(base.scaled(self.multiplier), **self.overrides)


@dataclass(frozen=True)
class ModelPrice:
    model: str
    prices: ComponentPrices
    currency: str = "USD"
    windows: tuple[TimeWindow, ...] = ()
    aliases: tuple[str, ...] = ()

    def at(self, when: datetime) -> tuple[ComponentPrices, str | None]:
        """Prices in force at `when`, and the name of the window applied (first match)."""
        for w in self.windows:
            if w.contains(when):
                return w.apply(self.prices), w.name
        return self.prices, None


@dataclass(frozen=True)
class Cost:
    """The billed amount of one request, by component, in `currency`: exact
    Decimals (`exact_*`), and the nearest floats under the plain names."""

    model: str
    currency: str
    exact_input_cache_hit: Decimal
    exact_input_cache_miss: Decimal
    exact_output: Decimal
    window: str | None = None

    @property
    def exact_total(self) -> Decimal:
        return self.exact_input_cache_hit + self.exact_input_cache_miss + self.exact_output

    @property
    def input_cache_hit(self) -> float:
        return to_float(self.exact_input_cache_hit)

    @property
    def input_cache_miss(self) -> float:
        return to_float(self.exact_input_cache_miss)

    @property
    def output(self) -> float:
        return to_float(self.exact_output)

    @property
    def total(self) -> float:
        return to_float(self.exact_total)

    def to_usage_dict(self) -> dict[str, Any]:
        """The `usage.cost` object of a response: JSON numbers that print as
        the exact amounts."""
        out: dict[str, Any] = {
            "currency": self.currency,
            "input_cache_hit": self.input_cache_hit,
            "input_cache_miss": self.input_cache_miss,
            "output": self.output,
            "total": self.total,
        }
        if self.window:
            out["window"] = self.window
        return out


_COMPONENTS = ("input_cache_hit", "input_cache_miss", "output")


def _as_utc(at: datetime) -> datetime:
    # A naive datetime is taken to be UTC already (the server stamps times in UTC).
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def _parse_window(raw: dict[str, Any], model: str) -> TimeWindow:
    overrides = {k: float(raw[k]) for k in _COMPONENTS if k in raw}
    if "multiplier" not in raw and "discount" in raw:
        multiplier = 1.0 - float(raw["discount"])  # discount = fraction taken off
    else:
        multiplier = float(raw.get("multiplier", 1.0))
    if multiplier < 0:
        raise ValueError(f"price window for {model!r}: multiplier must be >= 0")
    return TimeWindow(name=str(raw.get("name", "window")), start_minute=_minute_of_day(raw["start"]),
                      end_minute=_minute_of_day(raw["end"]), multiplier=multiplier, overrides=overrides)


def _parse_model(name: str, raw: dict[str, Any]) -> ModelPrice:
    missing = [k for k in _COMPONENTS if k not in raw]
    if missing:
        raise ValueError(f"price for model {name!r} lacks {', '.join(missing)}")
    return ModelPrice(
        model=name, prices=ComponentPrices(*(float(raw[k]) for k in _COMPONENTS)),
        currency=str(raw.get("currency", "USD")),
        windows=tuple(_parse_window(w, name) for w in raw.get("windows", [])),
        aliases=tuple(str(a) for a in raw.get("aliases", [])),
    )


@dataclass(frozen=True)
class PriceTable:
    models: dict[str, ModelPrice] = field(default_factory=dict)  # keyed by lower-case name
    machine_usd_per_hour: float = 0.0
    machine_currency: str = "USD"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PriceTable":
        machine = data.get("machine", {})
        models = {n.lower(): _parse_model(n, raw) for n, raw in data.get("models", {}).items()}
        return cls(models=models, machine_usd_per_hour=float(machine.get("usd_per_hour", 0.0)),
                   machine_currency=str(machine.get("currency", "USD")))

    @classmethod
    def load(cls, path: str | Path | None = None) -> "PriceTable":
        """Read a price TOML; without a path, the packaged default_prices.toml."""
        if path is None:
            text = resources.files("jevons.cost").joinpath("default_prices.toml").read_text()
        else:
            text = Path(path).read_text()
        return cls.from_dict(tomllib.loads(text))

    def get(self, model: str) -> ModelPrice | None:
        key = model.lower()
        if key in self.models:
            return self.models[key]
        for mp in self.models.values():
            if key in (a.lower() for a in mp.aliases):
                return mp
        return None

    def price_request(self, model: str, prompt_hit_tokens: int, prompt_miss_tokens: int,
                      completion_tokens: int, at: datetime | None = None) -> Cost:
        """Bill one request. `completion_tokens` includes reasoning tokens.
        Raises KeyError for a model without a price."""
        mp = self.get(model)
        if mp is None:
            raise KeyError(f"no price for model {model!r}")
        if min(prompt_hit_tokens, prompt_miss_tokens, completion_tokens) < 0:
            raise ValueError("token counts must be >= 0")
        prices, window = mp.at(at or datetime.now(timezone.utc))

        def amount(tokens: int, per_million: float) -> Decimal:
            return quantize(tokens * to_decimal(per_million) / PER_MILLION)

        return Cost(
            model=mp.model, currency=mp.currency, window=window,
            exact_input_cache_hit=amount(prompt_hit_tokens, prices.input_cache_hit),
            exact_input_cache_miss=amount(prompt_miss_tokens, prices.input_cache_miss),
            exact_output=amount(completion_tokens, prices.output),
        )

    def with_model(self, model: str, *, input_cache_hit: float | None = None,
                   input_cache_miss: float | None = None, output: float | None = None,
                   currency: str | None = None) -> "PriceTable":
        """A copy with one model's list prices overridden (explicit values beat the
        file), or added: a new model needs all three components."""
        given = {k: v for k, v in zip(_COMPONENTS, (input_cache_hit, input_cache_miss, output))
                 if v is not None}
        existing = self.get(model)
        if existing is None:
            updated = _parse_model(model, {**given, "currency": currency or "USD"})
        else:
            updated = dataclasses.replace(existing, prices=dataclasses.replace(existing.prices, **given),
                                          currency=currency or existing.currency)
        models = {k: v for k, v in self.models.items() if v is not existing}
        models[updated.model.lower()] = updated
        return dataclasses.replace(self, models=models)

    def with_machine_cost(self, usd_per_hour: float) -> "PriceTable":
        return dataclasses.replace(self, machine_usd_per_hour=float(usd_per_hour))


def load_prices(path: str | Path | None = None, machine_usd_per_hour: float | None = None) -> PriceTable:
    """The price table for the server: a file (or the default), then the machine cost flag."""
    table = PriceTable.load(path)
    return table if machine_usd_per_hour is None else table.with_machine_cost(machine_usd_per_hour)
