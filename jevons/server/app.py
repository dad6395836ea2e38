"""The FastAPI application: routes, error shapes, auth, and the engine's life
(loaded in the background after the socket is open; shut down last)."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from jevons import __version__
from jevons.server.auth import APIKeyAuth
from jevons.server.config import ServeConfig
from jevons.server.dialects.openai_responses.store import ResponseStore
from jevons.server.docs_page import install_docs
from jevons.server.edges import BodySizeLimit, HostGuard, host_guard_names
from jevons.server.errors import install_error_handlers
from jevons.server.routes_admin import router as admin_router
from jevons.server.routes_anthropic import router as anthropic_router
from jevons.server.routes_chat import router as chat_router
from jevons.server.routes_completions import router as completions_router
from jevons.server.routes_openai_responses import router as openai_responses_router
from jevons.server.routes_console import install_console
from jevons.server.routes_tokenize import router as tokenize_router
from jevons.server.routes_usage import router as usage_router
from jevons.server.state import EngineFactory, ServerState

DESCRIPTION = """OpenAI- and DeepSeek-compatible API in front of the jevons engine.
Point any OpenAI client at `http://HOST:PORT/v1`."""


def build_app(config: ServeConfig, engine_factory: EngineFactory | None = None) -> FastAPI:
    state = ServerState(config, engine_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(state.load())
        try:
            yield
        finally:
            state.draining = True
            if not loader.done():
                loader.cancel()  # the loading thread finishes on its own; its engine is never started
            state.shutdown()
            app.state.responses_store.close()

    # /docs is our own self-contained page (docs_page.py): Swagger UI's assets come from a CDN.
    app = FastAPI(title="jevons", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    install_docs(app)
    app.state.jevons = state
    # Stored Responses-API responses, beside the ledger (dialects/openai_responses/store.py).
    app.state.responses_store = ResponseStore.for_ledger(config.ledger)
    install_error_handlers(app, config.retry_after_s)
    for router in (chat_router, completions_router, admin_router, tokenize_router, usage_router):
        app.include_router(router)
    app.include_router(openai_responses_router)  # /v1/responses (routes_openai_responses.py)
    app.include_router(anthropic_router)  # /v1/messages and /anthropic/v1/messages (routes_anthropic.py)
    install_console(app)  # the web console at / (routes_console.py)
    # Middleware, innermost first (edges.py): body size, API keys, CORS, Host/Origin.
    if config.max_body_size is not None:
        app.add_middleware(BodySizeLimit, max_bytes=config.max_body_size)
    if config.api_keys:
        # An admin key is also a key: it passes here, and /v1/usage checks it is an admin's.
        app.add_middleware(APIKeyAuth, keys=[*config.api_keys, *config.admin_keys],
                           protect_probes=config.auth_health_metrics)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    names = host_guard_names(config.allowed_hosts, bool(config.api_keys))
    if names is not None:
        app.add_middleware(HostGuard, allowed_hosts=names, cors_origins=config.cors_origins)
    return app
