"""Server settings, frozen: everything the app needs arrives here, not through
globals or environment variables."""
from __future__ import annotations

from dataclasses import dataclass, field

from jevons.config import EngineConfig


@dataclass(frozen=True)
class ServeConfig:
    # The engine's settings (model, dtype, KV cache, ...): the server builds its
    # EngineCore from exactly this, as LLM(config=...) and the CLI do.
    engine: EngineConfig = field(default_factory=EngineConfig)
    # Names clients may put in "model"; the first is the one /v1/models lists.
    # Empty: the engine's own model name.
    served_model_names: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()
    # Whether /health and /metrics need a key too (probes and Prometheus
    # scrapers usually carry none, so by default they do not).
    auth_health_metrics: bool = False
    # Sequences (a request counts n) allowed to wait for a slot before new ones get 429.
    max_waiting: int | None = 256
    # The most tokens one request may ask to generate: n x max_tokens (x prompts
    # for a completions batch; the context left when max_tokens is unset). None: no cap.
    max_request_tokens: int | None = 262144
    # Sequences (n counts) one API key may have in flight; None: no limit.
    max_seqs_per_key: int | None = None
    retry_after_s: int = 1
    # Seconds between SSE keep-alive comments while a stream has nothing to say.
    sse_keepalive_s: float = 10.0
    # "auto": split <think>...</think> when the tokenizer has both tags as
    # single tokens; "deepseek_r1": always; "none": never.
    reasoning_parser: str = "auto"
    # The model's tool-call format (server/tool_calls/registry.py); None: read from its chat template.
    tool_call_parser: str | None = None
    # Graceful shutdown: how long in-flight requests may run after SIGTERM.
    shutdown_timeout_s: float = 30.0
    # Unknown and unsupported request fields: a logged warning instead of a 400,
    # and no upper bound on temperature.
    lenient: bool = False
    # --- cost (docs/cost.md) ---------------------------------------------------
    # A price TOML, "default" for jevons/cost/default_prices.toml, or None: then
    # responses carry usage.cost only if the override prices below are complete.
    prices: str | None = None
    # Per-model overrides (per million tokens) for the served model: they replace
    # the file's components, or price a model the file lacks (all three needed).
    price_input_hit: float | None = None
    price_input_miss: float | None = None
    price_output: float | None = None
    currency: str | None = None
    # The machine's cost; None: the price file's [machine] usd_per_hour, else 0.
    usd_per_hour: float | None = None
    # SQLite ledger path ("default": ~/.local/share/jevons/ledger.sqlite); None: off.
    ledger: str | None = None
    # Keys allowed to read GET /v1/usage (they also pass the API-key check).
    admin_keys: tuple[str, ...] = ()
    # --- network edges (server/edges.py) ---------------------------------------
    # Host names a request's Host header may carry (any port); "*" turns the
    # check off. None: without an API key, loopback names and IP addresses
    # (what DNS rebinding cannot forge); with a key, no check. Given names
    # widen that default and apply with a key too.
    allowed_hosts: tuple[str, ...] | None = None
    # Origins allowed cross-origin (CORS); empty: no CORS headers at all.
    cors_origins: tuple[str, ...] = ()
    # Largest request body in bytes; beyond it 413 before anything is parsed.
    max_body_size: int | None = 4 * 1024 * 1024
    # Open connections; a connection beyond them gets 503 and is closed.
    max_connections: int | None = 1024
    # Seconds an idle keep-alive connection stays open (uvicorn's setting).
    timeout_keep_alive_s: int = 5
    # Seconds a new (or idle) connection has to deliver a complete request head.
    header_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.tool_call_parser is not None:
            from jevons.server.tool_calls.registry import PARSERS

            if self.tool_call_parser not in PARSERS:
                raise ValueError(f"unknown tool_call_parser {self.tool_call_parser!r} "
                                 f"(known: {', '.join(sorted(PARSERS))})")
