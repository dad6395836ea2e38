"""POST /v1/chat/completions."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from jevons.server.billing import Receipt
from jevons.server.chat_run import start_chat
from jevons.server.choices import ChoiceDelta, RequestTracker
from jevons.server.engine_stream import EngineStream, merge
from jevons.server.logprobs import chat_logprobs
from jevons.server.protocol import ChatCompletionRequest
from jevons.server.responses import AssistantMessage, ChatChoice, ChatCompletionResponse, ChatLogprobs, Usage
from jevons.server.routes_common import (
    STREAMING_RESPONSES, Meta, end_request, new_id, run_to_end, server_state, stream_error,
)
from jevons.server.sse import DONE, KEEPALIVE, SSEResponse, sse_data

router = APIRouter(tags=["OpenAI"])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses=STREAMING_RESPONSES,
    summary="Chat completion (OpenAI/DeepSeek compatible)",
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    state = server_state(request)
    run = await start_chat(request, body, Meta(new_id("chatcmpl"), body.model or state.model_name))
    streams, tracker, receipt, meta, params = run.streams, run.tracker, run.receipt, run.meta, run.params
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        gen = _stream(streams, tracker, receipt, meta, include_usage, params.logprobs, state.config.sse_keepalive_s)
        return SSEResponse(gen, on_close=lambda: end_request(streams, tracker, receipt))
    if not await run_to_end(request, streams, tracker, receipt):
        return Response(status_code=499)
    usage = receipt.usage(tracker)
    return JSONResponse(_response(tracker, meta, params.logprobs, state.reasoning, usage).model_dump())


def _response(tracker: RequestTracker, meta: Meta, k: int | None, reasoning: bool,
              usage: Usage) -> ChatCompletionResponse:
    choices = []
    for c in tracker.choices:
        lp = ChatLogprobs(content=chat_logprobs(c.token_ids, c.logprobs, k)) if k is not None else None
        msg = AssistantMessage(content=None if c.tool_calls and not c.content.strip() else c.content,
                               reasoning_content=c.reasoning if reasoning else None,
                               tool_calls=[t.openai() for t in c.tool_calls])
        choices.append(ChatChoice(index=c.index, message=msg, logprobs=lp, finish_reason=c.finish_reason,
                                  stop_reason=c.stop_reason))
    return ChatCompletionResponse(id=meta.id, created=meta.created, model=meta.model, choices=choices, usage=usage)


def _chunk(meta: Meta, choices: list[dict[str, Any]], include_usage: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": meta.id, "object": "chat.completion.chunk", "created": meta.created,
                           "model": meta.model, "system_fingerprint": None, "choices": choices}
    if include_usage:
        out["usage"] = None  # OpenAI sends null on every chunk but the last when usage is asked for
    return out


def _choice(d: ChoiceDelta, k: int | None) -> dict[str, Any] | None:
    delta: dict[str, Any] = {}
    if d.reasoning:
        delta["reasoning_content"] = d.reasoning
    if d.content:
        delta["content"] = d.content
    if d.tool_calls:  # each call whole, in one delta (the openai client assembles them as OpenAI's)
        delta["tool_calls"] = [t.openai(d.first_tool_index + i) for i, t in enumerate(d.tool_calls)]
    lp = None
    if k is not None and d.logprobs and d.token_ids:
        lp = {"content": chat_logprobs(d.token_ids, d.logprobs, k), "refusal": None}
    if not delta and lp is None and d.finish_reason is None:
        return None  # nothing to say (e.g. the detokenizer holds half a character)
    out = {"index": d.index, "delta": delta, "logprobs": lp, "finish_reason": d.finish_reason}
    if d.finish_reason is not None:
        out["stop_reason"] = d.stop_reason
    return out


async def _stream(
    streams: list[EngineStream], tracker: RequestTracker, receipt: Receipt, meta: Meta, include_usage: bool,
    k: int | None, tick: float,
) -> AsyncIterator[bytes]:
    started = False
    try:
        async for item in merge(streams, tick):
            if item is None:
                yield KEEPALIVE
                continue
            if not started:
                started = True
                for c in tracker.choices:  # the first chunk of each choice carries the role
                    role = {"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None}
                    yield sse_data(_chunk(meta, [role], include_usage))
            for d in tracker.on_event(*item):
                choice = _choice(d, k)
                if choice is not None:
                    yield sse_data(_chunk(meta, [choice], include_usage))
        if include_usage:
            final = _chunk(meta, [], False)
            final["usage"] = receipt.usage(tracker).model_dump()
            yield sse_data(final)
        await receipt.finish(tracker)  # the ledger row is committed before [DONE]
        yield DONE
    except Exception as e:  # the engine died mid-stream (or the ledger failed); the 200 is already out
        end_request(streams, tracker, receipt)
        for part in stream_error(e):
            yield part
    finally:
        end_request(streams, tracker, receipt)
