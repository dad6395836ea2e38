"""Pieces both generation routes share: response metadata, running a
non-streaming request while watching for the client to leave, and the error
event a stream ends with when the engine fails mid-way."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable

from fastapi import Request

from jevons.engine.async_engine import AsyncEngine
from jevons.sampling_params import SamplingParams
from jevons.server.billing import Receipt
from jevons.server.choices import RequestTracker
from jevons.server.engine_stream import EngineStream, close_all, merge, open_streams, wait_for_disconnect
from jevons.server.errors import error_body, to_api_error
from jevons.server.key_limits import KeyLimiter
from jevons.server.responses import ErrorResponse
from jevons.server.sse import DONE, sse_data
from jevons.server.state import ServerState

log = logging.getLogger("jevons.server")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (OpenAI error JSON)"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    429: {"model": ErrorResponse, "description": "Waiting queue full; see Retry-After"},
    503: {"model": ErrorResponse, "description": "Model loading or server shutting down"},
}
# The generation routes answer JSON, or SSE chunks when the request streams.
STREAMING_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    200: {"content": {"text/event-stream": {}}, "description": "A completion, or SSE chunks when stream is true"},
}


def server_state(request: Request) -> ServerState:
    return request.app.state.jevons


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class Meta:
    """Fields every response and chunk of one request repeats."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))


class ClientGone(Exception):
    pass


async def until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Run `work`; if the client disconnects first, cancel it and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientGone()
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()


async def collect(streams: list[EngineStream], tracker: RequestTracker) -> None:
    async for item in merge(streams, None):
        if item is not None:
            tracker.on_event(*item)


def finish_streams(streams: list[EngineStream], tracker: RequestTracker) -> None:
    """Always run when a request ends, however: abort what is left, count aborts."""
    close_all(streams)
    tracker.abandon()


async def open_leased(key_limits: KeyLimiter, receipt: Receipt, engine: AsyncEngine,
                      reqs: list[tuple[str, list[int], SamplingParams]]) -> list[EngineStream]:
    """open_streams under the API key's sequence limit (every request counts
    its n); the lease ends when the receipt settles, however the request ends."""
    lease = key_limits.acquire(receipt.key_id, sum(p.n for _, _, p in reqs))
    receipt.on_settle.append(lease.release)
    try:
        return await open_streams(engine, reqs)
    except BaseException:
        lease.release()
        raise


def end_request(streams: list[EngineStream], tracker: RequestTracker, receipt: Receipt) -> None:
    """However a request ends (cancelled included): abort what is left, count
    aborts, and queue its ledger row if it has not been written yet."""
    finish_streams(streams, tracker)
    receipt.finish_nowait(tracker)


async def run_to_end(request: Request, streams: list[EngineStream], tracker: RequestTracker,
                     receipt: Receipt) -> bool:
    """Run a non-streaming request and commit its ledger row before the caller
    answers. False if the client left first (its row says "abort")."""
    try:
        await until_disconnect(request, collect(streams, tracker))
        answered = True
    except ClientGone:
        answered = False
    except BaseException:
        end_request(streams, tracker, receipt)
        raise
    finish_streams(streams, tracker)
    await receipt.finish(tracker)
    return answered


def stream_error(exc: BaseException) -> list[bytes]:
    """An error after the 200 went out: OpenAI-style error event, then [DONE]."""
    log.error("stream failed: %r", exc)
    err = to_api_error(exc)
    return [sse_data(error_body(err.message, err.type, err.param, err.code)), DONE]
