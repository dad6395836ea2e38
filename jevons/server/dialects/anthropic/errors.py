"""Errors on the Anthropic routes in Anthropic's shape:
{"type": "error", "error": {"type": "invalid_request_error", "message": ...}}.

The chat path raises the server's APIError (and FastAPI its validation
error); `AnthropicRoute` catches them on these routes only and answers with the
same status in this shape, so an Anthropic client's exception classes
(BadRequestError, NotFoundError, RateLimitError, ...) fire as they would
against Anthropic. The message still names the field (Anthropic has no
`param`)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from jevons.server.errors import APIError, to_api_error, validation_error

log = logging.getLogger("jevons.server")

# Anthropic's error types by status (its "Errors" page); 503 (jevons loading or
# draining) reads as overloaded, which Anthropic clients retry.
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    405: "invalid_request_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    503: "overloaded_error", 529: "overloaded_error",
}
# Where these routes live: Anthropic's own paths, and DeepSeek's /anthropic base URL.
PATH_PREFIXES = ("/v1/messages", "/anthropic/")


def is_anthropic_path(path: str) -> bool:
    return path.startswith(PATH_PREFIXES)


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def anthropic_error_response(err: APIError) -> JSONResponse:
    return JSONResponse(anthropic_error_body(err.status, err.message), err.status, headers=err.headers)


def as_api_error(exc: Exception) -> APIError:
    if isinstance(exc, RequestValidationError):
        return validation_error(exc)
    if isinstance(exc, StarletteHTTPException):
        return APIError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))
    err = to_api_error(exc)
    if err.code == "internal_error":  # not an error the server meant: keep its traceback
        log.exception("unhandled error in a request")
    return err


class AnthropicRoute(APIRoute):
    """A route whose errors, validation included, leave in Anthropic's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - every error becomes an Anthropic error response
                return anthropic_error_response(as_api_error(exc))

        return handle
