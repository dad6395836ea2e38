"""POST /v1/chat/completions: the chat run (chat_run.py) shaped as OpenAI's
chat completion, or its chunks (openai_stream.py)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from jevons.server.chat_run import start_chat
from jevons.server.choices import ChoiceDelta, RequestTracker
from jevons.server.logprobs import chat_logprobs
from jevons.server.openai_stream import openai_events
from jevons.server.protocol import ChatCompletionRequest
from jevons.server.responses import AssistantMessage, ChatChoice, ChatCompletionResponse, ChatLogprobs, Usage
from jevons.server.routes_common import STREAMING_RESPONSES, Meta, new_id, server_state
from jevons.server.sse import SSEResponse

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
    k = run.params.logprobs
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # The first chunk of each choice carries the role, once the first step is in.
        roles = [{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None} for c in run.tracker.choices]
        gen = openai_events(run, "chat.completion.chunk", lambda d: _choice(d, k), include_usage, roles, True)
        return SSEResponse(gen, on_close=run.end)
    if not await run.to_end():
        return Response(status_code=499)
    return JSONResponse(_response(run.tracker, run.meta, k, run.reasoning, run.usage()).model_dump())


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
