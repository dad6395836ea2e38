"""What a request costs, in one module: its token counts (`UsageCounter`,
the response's usage object), the price it is billed at (`ServerPricing`:
the price table by the model name the client used, then the server's other
served names, with the operator's --price-* flags on top, or alone for a
model the table lacks), and its row in the ledger.

`Billing` is the server's side: prices, the ledger writer, key ids, machine cost.
A `Receipt` follows one HTTP request. The route asks it for the usage object
(with `cost` when the model is priced) and calls `finish` once the request is
over: that commits the ledger row, and the route sends the response (or the
stream's [DONE]) only after it returns, so a `kill -9` at any later moment loses
nothing that was acknowledged. Paths that cannot wait (a stream cancelled by a
disconnect) call `finish_nowait`, which queues the row all the same. Either way a
request is settled exactly once.

A receipt reads a request's bookkeeping through `Tracked` (server/choices.py's
RequestTracker meets it), so this module imports nothing that imports it."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Protocol

from fastapi import Request

from jevons.cost.ledger import Ledger, LedgerEntry, resolve_ledger_path
from jevons.cost.ledger_writer import LedgerWriter
from jevons.cost.prices import Cost, PriceTable
from jevons.server.auth import api_key, key_digest, key_id
from jevons.server.config import ServeConfig
from jevons.server.errors import APIError
from jevons.server.metrics import ServerMetrics
from jevons.server.responses import CompletionTokensDetails, PromptTokensDetails, Usage, UsageCost

log = logging.getLogger("jevons.server")

ANONYMOUS = "anonymous"


# --- token counts -------------------------------------------------------------

@dataclass
class UsageCounter:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # the part of prompt_tokens served from the prefix cache
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # the part of completion_tokens spent inside <think>

    def to_model(self, cost: dict[str, Any] | None = None) -> Usage:
        """`cost`: Cost.to_usage_dict() when the request is priced."""
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_tokens),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=self.reasoning_tokens),
            prompt_cache_hit_tokens=self.cached_tokens,
            prompt_cache_miss_tokens=self.prompt_tokens - self.cached_tokens,
            cost=UsageCost(**cost) if cost is not None else None,
        )


class _Choice(Protocol):
    finish_reason: str | None


class Tracked(Protocol):
    """What a receipt reads of one request's bookkeeping."""

    @property
    def choices(self) -> Sequence[_Choice]: ...

    def usage(self) -> UsageCounter: ...


# --- prices ---------------------------------------------------------------------

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
    """Prices are resolved once per name list and cached: the table is immutable and
    the set of names a server accepts is small."""

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


# --- the server's side, and one request's receipt ---------------------------------

class Billing:
    def __init__(self, config: ServeConfig, metrics: ServerMetrics) -> None:
        table = None
        if config.prices:
            table = PriceTable.load(None if config.prices == "default" else config.prices)
        self.pricing = ServerPricing(table, PriceOverrides(config.price_input_hit, config.price_input_miss,
                                                           config.price_output, config.currency))
        # The flag beats the file's [machine] section; a CPU you own costs nothing.
        if config.usd_per_hour is not None:
            self.usd_per_hour = float(config.usd_per_hour)
        else:
            self.usd_per_hour = table.machine_usd_per_hour if table is not None else 0.0
        self.metrics = metrics
        self.ledger: Ledger | None = None
        self.writer: LedgerWriter | None = None
        if config.ledger:
            self.ledger = Ledger(resolve_ledger_path(config.ledger))
            self.writer = LedgerWriter(self.ledger)
            log.info("usage ledger: %s", self.ledger.path)
        # Only keys the server checks get an id; anything else a client sends is anonymous.
        self._ids = {key_digest(k): key_id(k) for k in (*config.api_keys, *config.admin_keys) if k}
        if self._ids and self.writer is not None:  # so the operator can map ledger rows to keys
            log.info("ledger key ids: %s", ", ".join(sorted(set(self._ids.values()))))

    def key_id(self, request: Request) -> str:
        token = api_key(request.scope.get("headers", []))
        return self._ids.get(key_digest(token), ANONYMOUS) if token else ANONYMOUS

    def receipt(self, request: Request, request_id: str, model: str, names: Sequence[str]) -> "Receipt":
        return Receipt(self, request_id, self.key_id(request), model, [model, *names])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()  # commits what is still queued


def summary_finish_reason(reasons: Sequence[str | None]) -> str:
    """One reason per request: the choices' reasons, unique, in choice order."""
    return ",".join(dict.fromkeys(r or "abort" for r in reasons)) or "abort"


class Receipt:
    def __init__(self, billing: Billing, request_id: str, key: str, model: str, names: list[str]) -> None:
        self.billing = billing
        self.request_id = request_id
        self.key_id = key
        self.model = model
        self.names = names
        self.started = time.monotonic()
        # Prices are those in force when the request arrived: a client can know
        # them before sending, even if the answer ends inside another window.
        self.arrived = datetime.now(timezone.utc)
        self.settled = False
        # Run once when the request is settled, however it ends (key_limits leases).
        self.on_settle: list[Callable[[], None]] = []

    def cost(self, tracker: Tracked) -> Cost | None:
        u = tracker.usage()
        return self.billing.pricing.price(self.names, u.cached_tokens, u.prompt_tokens - u.cached_tokens,
                                          u.completion_tokens, self.arrived)

    def usage(self, tracker: Tracked) -> Usage:
        """The response's usage object, with `cost` when this model is priced."""
        cost = self.cost(tracker)
        return tracker.usage().to_model(cost.to_usage_dict() if cost is not None else None)

    def _settle(self, tracker: Tracked):
        if self.settled:
            return None
        self.settled = True
        for release in self.on_settle:
            release()
        u, cost = tracker.usage(), self.cost(tracker)
        if cost is not None:
            self.billing.metrics.billed(self.model, cost.currency, cost.total)
        if self.billing.writer is None:
            return None
        entry = LedgerEntry(
            request_id=self.request_id, key_id=self.key_id, model=self.model, prompt_tokens=u.prompt_tokens,
            cached_tokens=u.cached_tokens, completion_tokens=u.completion_tokens,
            reasoning_tokens=u.reasoning_tokens, billed=cost.exact_total if cost is not None else Decimal(0),
            currency=cost.currency if cost is not None else "",  # "": not priced
            latency_s=time.monotonic() - self.started,
            finish_reason=summary_finish_reason([c.finish_reason for c in tracker.choices]),
            created=time.time(),
        )
        return self.billing.writer.submit(entry)

    async def finish(self, tracker: Tracked) -> None:
        """Record the request; returns once its ledger row is committed."""
        fut = self._settle(tracker)
        if fut is None:
            return
        try:
            # shield: a disconnect cancelling this wait must not cancel the write.
            await asyncio.shield(asyncio.wrap_future(fut))
        except Exception as e:
            # Fail closed: an answer that is not in the ledger is not acknowledged.
            raise APIError(500, f"the usage ledger could not be written: {e}", code="ledger_error") from e

    def finish_nowait(self, tracker: Tracked) -> None:
        """Record the request without waiting (the writer logs a failure)."""
        self._settle(tracker)
