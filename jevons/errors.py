"""Errors a caller can act on. The server maps them to OpenAI error JSON."""
from __future__ import annotations


class InvalidRequestError(ValueError):
    """The request can never be served as asked (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class EngineOverloadedError(RuntimeError):
    """The waiting queue is full (HTTP 429); retry later."""


class EngineDeadError(RuntimeError):
    """The step loop stopped on an unexpected error (HTTP 500)."""


class RequestFailedError(RuntimeError):
    """One request failed inside the engine (HTTP 500); the engine goes on
    serving the others. Carries the request id for the logs and the client."""

    def __init__(self, request_id: str, message: str) -> None:
        super().__init__(f"request {request_id} failed in the engine: {message}")
        self.request_id = request_id
