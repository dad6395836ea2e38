"""`jevons serve`: parse flags, build the app, run uvicorn with graceful
shutdown (SIGTERM: stop accepting, let in-flight requests finish for up to
--shutdown-timeout seconds, abort the rest, exit 0)."""
from __future__ import annotations

import argparse
import logging
import signal
import sqlite3
import sys

log = logging.getLogger("jevons.server")


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    from jevons.cli_args import add_engine_args
    from jevons.server.tool_calls.registry import PARSERS as TOOL_PARSERS

    p = sub.add_parser("serve", help="OpenAI/DeepSeek-compatible HTTP API server")
    add_engine_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 to serve other machines")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--served-model-name", action="append", default=None,
                   help="name(s) clients use in 'model' (repeatable; default: the model's name)")
    g.add_argument("--api-key", action="append", default=None, help="require this bearer key (repeatable)")
    g.add_argument("--api-keys-file", default=None, help="file with one key per line (# comments allowed)")
    g.add_argument("--auth-health-metrics", action="store_true", help="require a key for /health and /metrics too")
    g.add_argument("--max-waiting", type=int, default=256,
                   help="sequences allowed to wait for a slot (a request with n choices counts n); beyond it new "
                        "requests get 429, and one with n above it 400 (default: %(default)s)")
    g.add_argument("--max-request-tokens", type=int, default=262144,
                   help="the most tokens one request may ask to generate, n x max_tokens (the context left after "
                        "the prompt when max_tokens is unset); beyond it a 400. 0: no cap (default: %(default)s)")
    g.add_argument("--max-seqs-per-key", type=int, default=0,
                   help="sequences (a request counts n) one API key may have in flight; beyond it a 429, and a "
                        "single request above it a 400. Without keys, all clients share one count. 0: off "
                        "(default: %(default)s)")
    g.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds sent with 429 and 503")
    g.add_argument("--sse-keepalive", type=float, default=10.0, help="seconds between SSE keep-alive comments")
    g.add_argument("--reasoning-parser", default="auto", choices=["auto", "deepseek_r1", "none"],
                   help="split <think>...</think> into reasoning_content (auto: if the tokenizer has the tags)")
    g.add_argument("--tool-call-parser", default=None, choices=sorted(TOOL_PARSERS),
                   help="the format the model writes tool calls in (default: read from its chat template; "
                        "hermes for a template without tool support)")
    g.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests may run after SIGTERM before they are aborted")
    g.add_argument("--lenient", action="store_true",
                   help="log and ignore unknown or unsupported request fields instead of answering 400, "
                        "and allow temperature above 2")
    g.add_argument("--uvicorn-log-level", default="info")
    add_edge_args(p)
    add_cost_args(p)
    p.set_defaults(func=cmd_serve)


def add_edge_args(p: argparse.ArgumentParser) -> None:
    """Host/Origin allowlist, CORS, body size and connection limits (server/edges.py)."""
    g = p.add_argument_group("network edges")
    g.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                   help="comma list of extra names the Host header may carry (any port; *.example.com for "
                        "subdomains); '*' turns the check off. Default: without an API key only loopback names "
                        "and IP addresses (DNS rebinding defence); with a key no check")
    g.add_argument("--cors-origins", default=None, metavar="ORIGINS",
                   help="comma list of origins (e.g. http://localhost:3000, or '*') allowed cross-origin "
                        "requests; default: none, no CORS headers")
    g.add_argument("--max-body-size", default="4MiB", metavar="SIZE",
                   help="largest request body (e.g. 4MiB, 512k); beyond it 413 (default: %(default)s)")
    g.add_argument("--max-connections", type=int, default=1024,
                   help="open connections; a request on one beyond gets 503 and the connection closes. "
                        "0: no limit (default: %(default)s)")
    g.add_argument("--timeout-keep-alive", type=int, default=5, metavar="SECONDS",
                   help="close an idle keep-alive connection after this long (default: %(default)s)")


def _comma_list(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(x.strip() for x in value.split(",") if x.strip())


def add_cost_args(p: argparse.ArgumentParser) -> None:
    """Prices, the ledger and the machine's cost (docs/cost.md)."""
    g = p.add_argument_group("cost")
    g.add_argument("--prices", default=None, metavar="FILE",
                   help="price TOML, or 'default' for DeepSeek's list prices (jevons/cost/default_prices.toml); "
                        "with prices set, every usage object carries a cost (default: no prices)")
    g.add_argument("--price-input-hit", type=float, default=None, metavar="USD_PER_M",
                   help="served model's price per million input tokens found in the prefix cache")
    g.add_argument("--price-input-miss", type=float, default=None, metavar="USD_PER_M",
                   help="served model's price per million input tokens not in the cache")
    g.add_argument("--price-output", type=float, default=None, metavar="USD_PER_M",
                   help="served model's price per million output tokens (reasoning included)")
    g.add_argument("--currency", default=None, help="currency of the --price-* flags (default: the file's, or USD)")
    g.add_argument("--usd-per-hour", type=float, default=None,
                   help="the machine's cost per hour, for serving $ per million output tokens on /metrics "
                        "(default: the price file's [machine] usd_per_hour, else 0)")
    g.add_argument("--ledger", default=None, metavar="PATH",
                   help="append every finished request to this SQLite ledger; 'default' is "
                        "~/.local/share/jevons/ledger.sqlite (default: off)")
    g.add_argument("--admin-key", action="append", default=None,
                   help="bearer key that may read GET /v1/usage (repeatable)")


def serve_config(a: argparse.Namespace):
    from jevons.cli_args import engine_config
    from jevons.server.auth import read_keys_file
    from jevons.server.config import ServeConfig
    from jevons.server.edges import parse_size

    keys = list(a.api_key or [])
    if a.api_keys_file:
        keys += read_keys_file(a.api_keys_file)
    return ServeConfig(
        engine=engine_config(a),
        served_model_names=tuple(a.served_model_name or ()),
        api_keys=tuple(keys),
        auth_health_metrics=a.auth_health_metrics,
        max_waiting=a.max_waiting,
        max_request_tokens=a.max_request_tokens or None,
        max_seqs_per_key=a.max_seqs_per_key or None,
        retry_after_s=a.retry_after,
        sse_keepalive_s=a.sse_keepalive,
        reasoning_parser=a.reasoning_parser,
        tool_call_parser=a.tool_call_parser,
        shutdown_timeout_s=a.shutdown_timeout,
        lenient=a.lenient,
        prices=a.prices,
        price_input_hit=a.price_input_hit,
        price_input_miss=a.price_input_miss,
        price_output=a.price_output,
        currency=a.currency,
        usd_per_hour=a.usd_per_hour,
        ledger=a.ledger,
        admin_keys=tuple(a.admin_key or ()),
        allowed_hosts=_comma_list(a.allowed_hosts),
        cors_origins=_comma_list(a.cors_origins) or (),
        max_body_size=parse_size(a.max_body_size),
        max_connections=a.max_connections or None,
        timeout_keep_alive_s=a.timeout_keep_alive,
    )


def _load_early(config):
    """Start building the engine now, on a daemon thread, and return the
    engine factory the app's loader calls (it waits for this one). None
    with data parallelism (the app builds its replicas itself)."""
    if config.engine.parallel.data_parallel_size != 1:
        return None
    import threading
    from concurrent.futures import Future

    done: Future = Future()

    def run() -> None:
        try:
            from jevons.engine.engine_core import EngineCore  # imported here, beside the server's modules

            done.set_result(EngineCore(config.engine, progress=False))  # what state.default_engine_factory builds
        except BaseException as e:  # re-raised where the app's loader waits, and reported there
            done.set_exception(e)
    threading.Thread(target=run, name="jevons-load", daemon=True).start()
    return lambda: done.result()


def cmd_serve(a: argparse.Namespace) -> int:
    from jevons.preflight import PreflightError, preflight_serve

    # Before the socket opens or a weight loads: a bad model, device, port or
    # memory budget ends here with one line, not a traceback (jevons/preflight.py).
    try:
        config = serve_config(a)
        preflight_serve(config.engine, a.host, a.port)
    except (PreflightError, OSError, ValueError) as e:
        print(f"jevons serve: {e}", file=sys.stderr)
        return 2
    # The model loads while the server's own modules import and the socket
    # opens (on two cores that overlap is ~0.5 s of the time to a first answer).
    early = _load_early(config)
    import uvicorn

    from jevons.server.app import build_app

    try:
        app = build_app(config, early)
    except (OSError, ValueError, sqlite3.Error) as e:  # a bad price file, an unwritable ledger
        log.error("jevons serve: %s", e)
        return 2
    state = app.state.jevons

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            state.draining = True  # /health says so; new requests on open connections get 503
            super().handle_exit(sig, frame)

    from jevons.server.edges import uvicorn_settings

    server = Server(uvicorn.Config(app, host=a.host, port=a.port, log_level=a.uvicorn_log_level,
                                   timeout_graceful_shutdown=config.shutdown_timeout_s,  # type: ignore[arg-type]
                                   **uvicorn_settings(config.header_timeout_s, config.max_connections,
                                                      config.timeout_keep_alive_s)))
    failed: list[BaseException] = []

    def on_load_failure(e: BaseException) -> None:
        failed.append(e)
        server.should_exit = True

    state.on_load_failure = on_load_failure
    # uvicorn re-raises the signal it caught once it has shut down; with the
    # default handler that would end the process with -SIGTERM instead of 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    log.info("loading %s; /health answers 503 until it is ready", config.engine.model)
    # Where a person points a browser: a wildcard bind is reachable on loopback.
    shown = "localhost" if a.host in ("0.0.0.0", "::", "") else (f"[{a.host}]" if ":" in a.host else a.host)
    log.info("web console: http://%s:%d/  (API: http://%s:%d/v1, docs: /docs)", shown, a.port, shown, a.port)
    server.run()
    return 1 if failed else 0
