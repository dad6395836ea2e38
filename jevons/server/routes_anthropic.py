"""Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens,
also under /anthropic (with GET /anthropic/v1/models) (DeepSeek's base URL for Anthropic clients:
ANTHROPIC_BASE_URL=http://HOST:PORT/anthropic).

A request is translated into a chat request (dialects/anthropic/convert.py)
and run on the chat path (chat_run.py); its answer and stream are shaped by
output.py and stream.py; every error on these routes leaves in Anthropic's
shape (errors.py's AnthropicRoute). The key may come as `x-api-key`
(auth.py); `anthropic-version` and `anthropic-beta` headers are accepted and
change nothing."""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from jevons.server.chat_run import Run, count_prompt_tokens, start_chat
from jevons.server.dialects.anthropic.convert import to_chat_request
from jevons.server.dialects.anthropic.errors import AnthropicRoute, as_api_error
from jevons.server.dialects.anthropic.output import content_blocks, message_object, stop_reason, usage_object
from jevons.server.dialects.anthropic.schema import UNSUPPORTED, CountTokensRequest, MessagesRequest
from jevons.server.dialects.anthropic.stream import MessagesStreamShaper
from jevons.server.dialects.param_names import rename_param
from jevons.server.errors import APIError
from jevons.server.routes_common import Meta, server_state
from jevons.server.sampling import check_fields
from jevons.server.sse import SSEResponse

log = logging.getLogger("jevons.server")

router = APIRouter(tags=["Anthropic"], route_class=AnthropicRoute)

# Chat field -> the Messages field a client sent, for errors the chat path raises.
PARAM_NAMES = {
    "stop": "stop_sequences", "max_reasoning_tokens": "thinking.budget_tokens", "user": "metadata.user_id",
    "reasoning_effort": "output_config.effort", r"response_format(\..*)?": "output_config.format",
    r"tools\[(\d+)\]\.function\.parameters": r"tools[\1].input_schema", r"tools\[(\d+)\]\.function\.(\w+)": r"tools[\1].\2",
    "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": f"Anthropic error JSON ({kind})"} for code, kind in
    ((400, "invalid_request_error"), (401, "authentication_error"), (404, "not_found_error"),
     (429, "rate_limit_error"), (503, "overloaded_error"))
}


def _checked(body: CountTokensRequest, request: Request) -> None:
    check_fields(body, server_state(request).sampling.lenient, unsupported=UNSUPPORTED)


@router.post("/v1/messages", responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
             summary="Create a message (Anthropic Messages API)")
@router.post("/anthropic/v1/messages", include_in_schema=False)
async def create_message(body: MessagesRequest, request: Request) -> Response:
    _checked(body, request)
    meta = Meta(f"msg_{uuid.uuid4().hex}", body.model)
    try:
        run = await start_chat(request, to_chat_request(body), meta, fit_context=True)
    except APIError as e:
        raise rename_param(e, PARAM_NAMES) from None
    context_cut = run.params.max_tokens is not None and run.params.max_tokens < body.max_tokens
    if body.stream:
        return SSEResponse(_stream(run, MessagesStreamShaper(meta.id, meta.model, context_cut)), on_close=run.end)
    if not await run.to_end():
        return Response(status_code=499)
    c = run.tracker.choices[0]
    msg = message_object(meta.id, meta.model, content_blocks(c),
                         stop_reason(c.finish_reason, c.stop_reason, context_cut), usage_object(run.usage()))
    return JSONResponse(msg)


async def _stream(run: Run, shaper: MessagesStreamShaper) -> AsyncIterator[bytes]:
    started = False
    try:
        async for deltas in run.deltas():
            if not started:  # after the first step: its prefix-cache hit is known for the usage
                started = True
                for part in shaper.start(run.usage()):
                    yield part
            if deltas is None:
                yield shaper.ping()
                continue
            for d in deltas:
                for part in shaper.on_delta(d):
                    yield part
        if not started:
            for part in shaper.start(run.usage()):
                yield part
        await run.finish()  # the ledger row is committed before message_stop
        for part in shaper.finish(run.tracker.choices[0], run.usage()):
            yield part
    except Exception as e:  # the engine died mid-stream (or the ledger failed); the 200 is already out
        run.end()
        log.error("messages stream failed: %r", e)
        yield shaper.error(as_api_error(e))
    finally:
        run.end()


@router.post("/v1/messages/count_tokens", responses=ERRORS, summary="Count a message's input tokens (Anthropic)")
@router.post("/anthropic/v1/messages/count_tokens", include_in_schema=False)
async def count_tokens(body: CountTokensRequest, request: Request) -> JSONResponse:
    _checked(body, request)
    try:
        n = await count_prompt_tokens(request, to_chat_request(body))
    except APIError as e:
        raise rename_param(e, PARAM_NAMES) from None
    return JSONResponse({"input_tokens": n})


def _model_info(name: str, created: int) -> dict[str, Any]:
    when = datetime.fromtimestamp(created, timezone.utc).isoformat().replace("+00:00", "Z")
    return {"type": "model", "id": name, "display_name": name, "created_at": when}


@router.get("/anthropic/v1/models", responses=ERRORS, summary="The served models, as Anthropic lists them")
async def list_models(request: Request) -> JSONResponse:
    """Under /anthropic only: /v1/models is OpenAI's list (routes_admin.py)."""
    state = server_state(request)
    state.require_engine()
    data = [_model_info(name, state.created) for name in state.served_names]
    return JSONResponse({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})


@router.get("/anthropic/v1/models/{model_id}", responses=ERRORS, summary="One served model, as Anthropic shows it")
async def get_model(model_id: str, request: Request) -> JSONResponse:
    state = server_state(request)
    state.require_engine(model_id)  # 404 for a name this server does not serve
    return JSONResponse(_model_info(model_id, state.created))
