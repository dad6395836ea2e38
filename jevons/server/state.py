"""What the running server knows: its settings, the engine once it has loaded,
and whether it is draining. The engine loads on a worker thread after uvicorn
is listening, so /health can answer 503 "loading" meanwhile."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Callable

from jevons.cost.serving import ServingCostMeter
from jevons.engine.async_engine import AsyncEngine
from jevons.engine.dp_engine import DataParallelEngine
from jevons.engine.engine_core import EngineCore
from jevons.loader.generation_config import log_defaults, read_generation_defaults
from jevons.server.billing import Billing
from jevons.server.config import ServeConfig
from jevons.server.errors import APIError
from jevons.server.key_limits import KeyLimiter
from jevons.server.metrics import ServerMetrics
from jevons.engine.reasoning import reasoning_enabled
from jevons.server.sampling import SamplingContext

log = logging.getLogger("jevons.server")

EngineFactory = Callable[..., EngineCore]  # () -> the engine; (i) -> data-parallel replica i


def default_engine_factory(config: ServeConfig) -> EngineFactory:
    def build(replica: int = 0) -> EngineCore:
        parallel = dataclasses.replace(config.engine.parallel, data_parallel_rank=replica)
        return EngineCore(dataclasses.replace(config.engine, parallel=parallel), progress=False)

    return build


class ServerState:
    def __init__(self, config: ServeConfig, engine_factory: EngineFactory | None = None) -> None:
        self.config = config
        self.engine_factory = engine_factory or default_engine_factory(config)
        self.engine: AsyncEngine | DataParallelEngine | None = None
        self.load_error: str | None = None
        self.draining = False
        self.reasoning = False
        # Sampling defaults (the model's generation config) and limits, once loaded.
        self.sampling = SamplingContext(lenient=config.lenient)
        self.created = int(time.time())
        self.metrics = ServerMetrics(self)
        # Prices, ledger and key ids; built here so a bad price file fails at startup.
        self.billing = Billing(config, self.metrics)
        self.key_limits = KeyLimiter(config.max_seqs_per_key, config.retry_after_s)
        self.serving: ServingCostMeter | None = None  # the machine's $/token, once serving
        # Called (on the event loop) if loading fails; the CLI uses it to exit.
        self.on_load_failure: Callable[[BaseException], None] | None = None

    # --- lifecycle -------------------------------------------------------------
    async def load(self) -> None:
        try:
            # --data-parallel-size N: N replicas, one router in front (engine/dp_engine.py).
            dp = self.config.engine.parallel.data_parallel_size
            cores = [await asyncio.to_thread(self.engine_factory, *([i] if dp > 1 else [])) for i in range(dp)]
            core = cores[0]
            if self.draining:  # shut down while loading: never start the step thread
                return
            self.reasoning = reasoning_enabled(self.config.reasoning_parser, core.tokenizer)
            # The same reading LLM makes (it logs it): one set of defaults for every front end.
            defaults = read_generation_defaults(core.model_path, self.config.engine.generation_config)
            log_defaults(defaults)
            self.sampling = SamplingContext(defaults, core.model_config.vocab_size, self.config.lenient,
                                            self.config.max_request_tokens)
            engines = [AsyncEngine(c, max_waiting=self.config.max_waiting,
                                   max_request_tokens=self.config.max_request_tokens) for c in cores]
            self.engine = engines[0] if len(engines) == 1 else DataParallelEngine(engines)
            # From the counter the engine keeps anyway: nothing added per step.
            self.serving = ServingCostMeter(self.billing.usd_per_hour,
                                            tokens=lambda: sum(c.generation_tokens_total for c in cores))
            log.info("serving %s as %s (reasoning parser: %s)", core.model_name, self.served_names,
                     "on" if self.reasoning else "off")
        except Exception as e:  # keep serving /health so the failure is visible
            log.exception("loading the model failed")
            self.load_error = f"{type(e).__name__}: {e}"
            if self.on_load_failure is not None:
                self.on_load_failure(e)

    def shutdown(self) -> None:
        self.draining = True
        if self.engine is not None:
            self.engine.shutdown()
        self.billing.close()  # last: commits every ledger row queued until now

    # --- facts -----------------------------------------------------------------
    @property
    def model_name(self) -> str:
        if self.config.served_model_names:
            return self.config.served_model_names[0]
        return self.engine.core.model_name if self.engine is not None else self.config.engine.model

    @property
    def served_names(self) -> list[str]:
        return list(self.config.served_model_names) or [self.model_name]

    def accepts_model(self, name: str | None) -> bool:
        if not name:
            return True
        known = set(self.served_names)
        if not self.config.served_model_names:
            # Without explicit names, the --model argument itself is accepted too.
            known.add(self.config.engine.model)
        return name in known

    def health(self) -> tuple[int, str, str | None]:
        if self.load_error is not None:
            return 503, "error", self.load_error
        if self.engine is not None and self.engine.dead is not None:
            return 503, "error", f"the engine stopped: {self.engine.dead!r}"
        if self.draining:
            return 503, "draining", None
        if self.engine is None:
            return 503, "loading", None
        core = self.engine.core
        if core.num_resets:  # serving again, but say that it had to recover
            return 200, "ok", (f"recovered: the engine was reset {core.num_resets} time(s) after a failed step, "
                               f"failing the requests in flight; last fault: {core.last_fault}")
        return 200, "ok", None

    # --- for routes ------------------------------------------------------------
    def require_engine(self, model: str | None = None) -> AsyncEngine | DataParallelEngine:
        code, status, detail = self.health()
        if code != 200:
            msg = {"loading": "the model is still loading", "draining": "the server is shutting down"}.get(
                status, detail or status)
            raise APIError(503, msg, code=status, headers={"Retry-After": str(self.config.retry_after_s)})
        if not self.accepts_model(model):
            raise APIError(404, f"the model {model!r} does not exist; this server serves {self.served_names}",
                           param="model", code="model_not_found")
        assert self.engine is not None
        return self.engine
