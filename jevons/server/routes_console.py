"""The web console (console/): GET / serves its page, /console/* its static
files, and /metrics.json the server's metrics as JSON for its dashboard.

The console is plain HTML, CSS and JavaScript modules shipped in the package:
no build step, nothing from a CDN, so it works on a machine without internet.
It talks to the public API only (/v1/models, /v1/chat/completions,
/v1/usage, /metrics.json) with the key the user types in; the page and its
files hold nothing private, so they need no key (auth.py lets them through).

A client asking for JSON at / (anything but a browser: curl sends */*) gets a
small index of where things are instead of the page."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles

from jevons import __version__
from jevons.server.routes_common import server_state

CONSOLE_DIR = Path(__file__).with_name("console")
CONSOLE_PREFIX = "/console/"
# Defence in depth for a page that shows model output: only this server's own
# scripts, styles and API, no inline script, no frames, no plugins.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

router = APIRouter()
_INDEX = {"api": "v1", "docs": "docs", "openapi": "openapi.json", "health": "health", "metrics": "metrics"}


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


@router.get("/", include_in_schema=False)
async def index(request: Request) -> Response:
    if not _wants_html(request):
        base = str(request.base_url)
        return JSONResponse({"object": "jevons.server", "version": __version__, "console": base,
                             **{k: base + path for k, path in _INDEX.items()}})
    return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


def _number(v: float) -> float | None:
    return v if math.isfinite(v) else None  # JSON has no NaN or Infinity (+Inf is a histogram's last bucket)


def metrics_snapshot(registry: Any) -> dict[str, Any]:
    """Every sample of a prometheus_client registry, grouped by metric family:
    {name: {"type", "samples": [{"name", "labels", "value"}]}}. Histogram
    buckets keep their "le" label ("+Inf" for the last)."""
    out: dict[str, Any] = {}
    for family in registry.collect():
        out[family.name] = {
            "type": family.type,
            "samples": [{"name": s.name, "labels": dict(s.labels), "value": _number(s.value)}
                        for s in family.samples],
        }
    return out


@router.get("/metrics.json", tags=["Operations"], summary="The /metrics samples as JSON (for the console)")
async def metrics_json(request: Request) -> JSONResponse:
    """The same samples as /metrics, so a browser need not parse the Prometheus
    text format. Unlike /metrics it needs a key when the server has keys."""
    state = server_state(request)
    return JSONResponse({"object": "metrics", "time": time.time(),
                         "metrics": metrics_snapshot(state.metrics.registry)})


def install_console(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(CONSOLE_PREFIX.rstrip("/"), StaticFiles(directory=CONSOLE_DIR), name="console")
