"""OpenAI's Responses API: POST /v1/responses, GET and DELETE
/v1/responses/{id}, GET /v1/responses/{id}/input_items. (server/responses.py is something else: the chat and
completions response bodies.)

A request is translated into a chat request (dialects/openai_responses/
convert.py) and run on the chat path (chat_run.py); its answer and its stream
are shaped by output.py and stream.py; `store` keeps it for GET and for a
later `previous_response_id` (store.py), visible to the API key that made it
only."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from jevons.server.chat_run import Run, start_chat
from jevons.server.dialects.openai_responses.convert import PARAM_NAMES, input_items, to_chat_request
from jevons.server.dialects.openai_responses.input_items import page, with_ids
from jevons.server.dialects.openai_responses.output import (
    ResponseHead, new_id, output_items, response_object, status_of,
)
from jevons.server.dialects.openai_responses.schema import UNSUPPORTED, DeletedResponse, ResponsesRequest
from jevons.server.dialects.openai_responses.store import ResponseStore
from jevons.server.dialects.openai_responses.stream import ResponsesStreamShaper
from jevons.server.dialects.param_names import rename_param
from jevons.server.errors import APIError, to_api_error
from jevons.server.routes_common import ERROR_RESPONSES, STREAMING_RESPONSES, Meta, server_state
from jevons.server.sampling import check_fields
from jevons.server.sse import KEEPALIVE, SSEResponse

log = logging.getLogger("jevons.server")

router = APIRouter(tags=["OpenAI Responses"])


def response_store(request: Request) -> ResponseStore:
    """The app's store (app.py opens it beside the ledger); an app built
    without one gets an in-memory store on first use."""
    app_state = request.app.state
    if getattr(app_state, "responses_store", None) is None:
        app_state.responses_store = ResponseStore.for_ledger(server_state(request).config.ledger)
    return app_state.responses_store


def _not_found(response_id: str, param: str | None = None) -> APIError:
    what = "Previous response" if param else "Response"
    return APIError(404, f"{what} with id {response_id!r} not found.", param=param,
                    code="previous_response_not_found" if param else "response_not_found")


@router.post("/v1/responses", responses=STREAMING_RESPONSES, summary="Create a response (OpenAI Responses API)")
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    state = server_state(request)
    check_fields(body, state.sampling.lenient, unsupported=UNSUPPORTED)
    store, key = response_store(request), state.billing.key_id(request)
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        prev = await asyncio.to_thread(store.get, body.previous_response_id, key)
        if prev is None:
            raise _not_found(body.previous_response_id, "previous_response_id")
        history = prev.history()
    head = ResponseHead(new_id("resp"), int(time.time()), body.model or state.model_name, body)
    try:
        run = await start_chat(request, to_chat_request(body, history), Meta(head.id, head.model, head.created_at))
    except APIError as e:
        raise rename_param(e, PARAM_NAMES) from None
    items = with_ids([*history, *input_items(body)])  # what a follow-up's previous_response_id continues
    k = run.params.logprobs
    if body.stream:
        gen = _stream(run, ResponsesStreamShaper(head, k), store if body.store else None, key, items)
        return SSEResponse(gen, on_close=run.end)
    if not await run.to_end():
        return Response(status_code=499)
    c = run.tracker.choices[0]
    status, incomplete = status_of(c.finish_reason)
    response = response_object(head, status, output_items(head, c, k), usage=run.usage(), incomplete=incomplete)
    if body.store:
        await asyncio.to_thread(store.put, key, time.time(), items, response)
    return JSONResponse(response)


async def _stream(run: Run, shaper: ResponsesStreamShaper, store: ResponseStore | None, key: str,
                  items: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        for part in shaper.start():
            yield part
        async for deltas in run.deltas():
            if deltas is None:
                yield KEEPALIVE
                continue
            for d in deltas:
                for part in shaper.on_delta(d):
                    yield part
        await run.finish()  # the ledger row is committed before the last event
        events, response = shaper.finish(run.tracker.choices[0], run.usage())
        if store is not None:
            await asyncio.to_thread(store.put, key, time.time(), items, response)
        for part in events:
            yield part
    except Exception as e:  # the engine died mid-stream (or the ledger failed); the 200 is already out
        run.end()
        log.error("responses stream failed: %r", e)
        err = to_api_error(e)
        yield shaper.failed(err.message, err.code)
    finally:
        run.end()


@router.get("/v1/responses/{response_id}", responses=ERROR_RESPONSES, summary="A stored response")
async def get_response(response_id: str, request: Request) -> JSONResponse:
    key = server_state(request).billing.key_id(request)
    stored = await asyncio.to_thread(response_store(request).get, response_id, key)
    if stored is None:
        raise _not_found(response_id)
    return JSONResponse(stored.response)


@router.get("/v1/responses/{response_id}/input_items", responses=ERROR_RESPONSES,
            summary="The input items of a stored response")
async def list_input_items(response_id: str, request: Request, limit: int = 20,
                           order: Literal["asc", "desc"] = "desc", after: str | None = None,
                           before: str | None = None) -> JSONResponse:
    key = server_state(request).billing.key_id(request)
    stored = await asyncio.to_thread(response_store(request).get, response_id, key)
    if stored is None:
        raise _not_found(response_id)
    return JSONResponse(page(stored.input_items, limit, order, after, before))


@router.delete("/v1/responses/{response_id}", response_model=DeletedResponse, responses=ERROR_RESPONSES,
               summary="Delete a stored response")
async def delete_response(response_id: str, request: Request) -> DeletedResponse:
    key = server_state(request).billing.key_id(request)
    if not await asyncio.to_thread(response_store(request).delete, response_id, key):
        raise _not_found(response_id)
    return DeletedResponse(id=response_id)
