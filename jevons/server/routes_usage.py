"""GET /v1/usage: the ledger summarized by key, model and day, for an admin key.

    GET /v1/usage?group_by=key,model,day&since=2025-03-01&until=2025-04-01&format=csv

Access: `Authorization: Bearer <--admin-key>`. No key or an unknown one is 401;
a valid API key that is not an admin key is 403 (as is any key when the server
has no --admin-key). The summary is read on a worker thread: the ledger's lock
may be held by a commit waiting on fsync, and the event loop must not wait too."""
from __future__ import annotations

import asyncio
import io
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from jevons.cost.ledger import to_csv
from jevons.cost.usage_cli import parse_time, with_serving_cost
from jevons.server.auth import bearer_token, key_digest, key_matches
from jevons.server.errors import APIError
from jevons.server.responses import ErrorResponse
from jevons.server.routes_common import server_state
from jevons.server.state import ServerState

router = APIRouter(tags=["Operations"])


def require_admin(state: ServerState, request: Request) -> None:
    token = bearer_token(request.scope.get("headers", []))
    if not token:
        raise APIError(401, "missing admin key: send Authorization: Bearer <admin key>", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    admins = [key_digest(k) for k in state.config.admin_keys]
    if admins and key_matches(token, admins):
        return
    if key_matches(token, [key_digest(k) for k in state.config.api_keys]):
        raise APIError(403, "this key may not read usage; it needs an admin key (--admin-key)",
                       code="permission_denied")
    if not admins:
        raise APIError(403, "GET /v1/usage is disabled: the server has no --admin-key", code="permission_denied")
    raise APIError(401, "incorrect admin key provided", code="invalid_api_key",
                   headers={"WWW-Authenticate": "Bearer"})


def _time(value: str | None, name: str) -> float | None:
    try:
        return parse_time(value)
    except ValueError:
        raise APIError(400, f"{name} must be unix seconds or an ISO date/time, not {value!r}", param=name) from None


@router.get("/v1/usage", responses={
    200: {"content": {"application/json": {}, "text/csv": {}},
          "description": "Summary rows (JSON, or CSV with format=csv)"},
    400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
    404: {"model": ErrorResponse, "description": "The server keeps no ledger (--ledger)"},
})
async def usage(
    request: Request,
    group_by: str = Query("key,model,day", description="comma-separated: key, model, day, hour; empty for totals"),
    since: str | None = Query(None, description="start, inclusive: unix seconds or ISO date/time (UTC)"),
    until: str | None = Query(None, description="end, exclusive: unix seconds or ISO date/time (UTC)"),
    format: str = Query("json", pattern="^(json|csv)$"),
) -> Response:
    state = server_state(request)
    require_admin(state, request)
    ledger = state.billing.ledger
    if ledger is None:
        raise APIError(404, "this server keeps no usage ledger; start it with --ledger PATH", code="ledger_disabled")
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    t0, t1 = _time(since, "since"), _time(until, "until")
    try:
        rows: list[dict[str, Any]] = await asyncio.to_thread(ledger.summarize, groups, t0, t1)
    except ValueError as e:
        raise APIError(400, str(e), param="group_by") from None
    if state.billing.usd_per_hour > 0:
        rows = with_serving_cost(rows, state.billing.usd_per_hour)
    if format == "csv":
        buf = io.StringIO()
        to_csv(rows, buf)
        return Response(buf.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="usage.csv"'})
    return JSONResponse({"object": "usage", "group_by": groups, "since": t0, "until": t1, "data": rows})
