"""Which price a request is billed at: the price table, looked up by the model
name the client used and then by the server's other served names, with the
operator's override flags on top (or, for a model the table lacks, alone).

Lookups are resolved once per name list and cached: the table is immutable and
the set of names a server accepts is small."""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from jevons.cost.prices import Cost, PriceTable

log = logging.getLogger("jevons.server")


@dataclass(frozen=True)
class PriceOverrides:
    """The --price-* flags, per million tokens; None leaves a component as the file has it."""

    input_cache_hit: float | None = None
    input_cache_miss: float | None = None
    output: float | None = None
    currency: str | None = None

    def given(self) -> bool:
        return any(v is not None for v in (self.input_cache_hit, self.input_cache_miss, self.output))

    def complete(self) -> bool:
        return None not in (self.input_cache_hit, self.input_cache_miss, self.output)


class ServerPricing:
    def __init__(self, table: PriceTable | None, overrides: PriceOverrides) -> None:
        if overrides.given() and not overrides.complete() and table is None:
            raise ValueError("without --prices, give all of --price-input-hit, --price-input-miss and "
                             "--price-output")
        self.table = table
        self.overrides = overrides
        self._resolved: dict[tuple[str, ...], tuple[PriceTable, str] | None] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.table is not None or self.overrides.complete()

    def _resolve(self, names: tuple[str, ...]) -> tuple[PriceTable, str] | None:
        """A one-model table and the name to bill under, or None (not priced)."""
        o = self.overrides
        kw = dict(input_cache_hit=o.input_cache_hit, input_cache_miss=o.input_cache_miss, output=o.output,
                  currency=o.currency)
        base = self.table or PriceTable()
        for name in names:
            mp = base.get(name)
            if mp is not None:
                table = base.with_model(mp.model, **kw) if o.given() or o.currency else base
                return table, mp.model
        if o.complete() and names:  # no entry under any name: the flags alone price it
            return PriceTable().with_model(names[0], **kw), names[0]
        log.warning("no price for model %s: its responses carry no usage.cost and bill 0",
                    " / ".join(repr(n) for n in names))
        return None

    def price(self, names: Sequence[str], hit_tokens: int, miss_tokens: int, completion_tokens: int,
              at: datetime) -> Cost | None:
        """Bill one request; `names` in lookup order (requested name first)."""
        if not self.enabled:
            return None
        key = tuple(dict.fromkeys(n for n in names if n))  # unique, order kept
        with self._lock:
            if key not in self._resolved:
                self._resolved[key] = self._resolve(key)
            found = self._resolved[key]
        if found is None:
            return None
        table, model = found
        return table.price_request(model, hit_tokens, miss_tokens, completion_tokens, at=at)
