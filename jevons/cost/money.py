"""Exact money: amounts are decimal.Decimal, stored as integer units of 1e-10.

A price is a decimal the operator wrote (0.14 per million tokens); a float that
holds one is read by its shortest repr, so 0.14 means 14/100 and never the
binary fraction nearest to it. Amounts are multiplied and added as Decimals,
rounded half-even to MONEY_DECIMALS places (finer than any list price per
token: 0.0675 per million is 6.75e-8 a token), and kept in SQLite as integers
of that unit, which SUM adds exactly. Only at the edge (a JSON number, a float
for a caller that wants one) does an amount become the float nearest to it,
whose repr is the exact decimal again: 2.234e-05, never 2.2340000000000003e-05.
"""
from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

MONEY_DECIMALS = 10
QUANTUM = Decimal(1).scaleb(-MONEY_DECIMALS)

Amount = Decimal | float | int | str


def to_decimal(value: Amount) -> Decimal:
    """An exact Decimal: a float is taken as the decimal its repr shows."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value)


def quantize(value: Amount) -> Decimal:
    """Rounded half-even to MONEY_DECIMALS places."""
    return to_decimal(value).quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def to_units(value: Amount) -> int:
    """Integer units of 1e-MONEY_DECIMALS, as the ledger stores them."""
    return int(quantize(value).scaleb(MONEY_DECIMALS))


def from_units(units: int | None) -> Decimal:
    return Decimal(int(units or 0)).scaleb(-MONEY_DECIMALS)


def to_float(value: Amount) -> float:
    """The float nearest to the exact amount; its repr prints the decimal (for
    amounts of up to 15 significant digits, i.e. below 100,000 at full precision)."""
    return float(quantize(value).normalize())


def format_amount(value: Amount) -> str:
    """The exact amount as plain decimal text, without trailing zeros: 0.00002234."""
    text = format(quantize(value).normalize(), "f")
    return "0" if text in ("-0", "") else text
