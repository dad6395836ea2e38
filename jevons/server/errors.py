"""Every error leaves the server as OpenAI's error JSON:
{"error": {"message", "type", "param", "code"}}.

Engine errors (jevons.errors), FastAPI's request validation (422 by default,
400 here, as OpenAI answers) and Starlette's 404/405 all go through here, so a
client library sees one shape whatever went wrong."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jevons.errors import EngineDeadError, EngineOverloadedError, InvalidRequestError, RequestFailedError

log = logging.getLogger("jevons.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error a route raises on purpose; becomes an OpenAI error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error")
        self.headers = headers


def error_body(message: str, type: str, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.type, err.param, err.code), err.status, headers=err.headers)


def to_api_error(exc: BaseException, retry_after_s: int = 1) -> APIError:
    """Map an engine or validation exception onto the HTTP error it means."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidRequestError):
        return APIError(400, str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, EngineOverloadedError):
        return APIError(
            429, f"the server is at capacity ({exc}); retry later",
            code="rate_limit_exceeded", headers={"Retry-After": str(retry_after_s)},
        )
    if isinstance(exc, EngineDeadError):
        return APIError(500, str(exc), code="engine_dead")
    if isinstance(exc, RequestFailedError):
        # Only this request failed; its id finds the traceback in the server log.
        return APIError(500, f"{exc}; other requests were not affected, retrying may succeed",
                        code="request_failed", headers={"X-Request-Id": exc.request_id})
    return APIError(500, f"internal server error: {type(exc).__name__}", code="internal_error")


def _validation_param(loc: tuple[Any, ...]) -> str | None:
    # ("body", "messages", 0, "role") -> "messages[0].role"
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def validation_error(exc: RequestValidationError) -> APIError:
    """A body that does not fit its model: a 400 naming the first problem's place."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    # A check over the whole body (e.g. invalid Unicode) names the place in its context.
    param = (first.get("ctx") or {}).get("param") or _validation_param(tuple(first.get("loc", ())))
    msg = first.get("msg", "invalid request")
    message = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return APIError(400, message, param=param, code=first.get("type"))


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(APIError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)))

    @app.exception_handler(InvalidRequestError)
    @app.exception_handler(EngineOverloadedError)
    @app.exception_handler(EngineDeadError)
    @app.exception_handler(RequestFailedError)
    async def _engine(_: Request, exc: Exception) -> JSONResponse:
        return error_response(to_api_error(exc, retry_after_s))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in a request")
        return error_response(to_api_error(exc))
