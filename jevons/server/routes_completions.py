"""POST /v1/completions: a string, a batch of strings, token ids or a batch
of token ids; `suffix` for fill-in-the-middle on models with FIM tokens."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from jevons.errors import InvalidRequestError
from jevons.server.billing import Receipt
from jevons.server.choices import ChoiceDelta, RequestTracker
from jevons.server.engine_stream import EngineStream, merge
from jevons.server.errors import APIError
from jevons.server.fim import fim_format, fim_prompt
from jevons.server.logprobs import CompletionLogprobBuilder, stop_token_hidden
from jevons.server.prompt_limits import check_prompt_chars, off_loop
from jevons.server.protocol import CompletionRequest
from jevons.server.responses import CompletionChoice, CompletionLogprobs, CompletionResponse
from jevons.server.routes_common import (
    STREAMING_RESPONSES, Meta, end_request, new_id, open_leased, run_to_end, server_state, stream_error,
)
from jevons.server.sampling import completion_sampling_params, request_error
from jevons.server.structured_request import check_structured, request_spec
from jevons.server.sse import DONE, KEEPALIVE, SSEResponse, sse_data

router = APIRouter(tags=["OpenAI"])


def _prompts(body: CompletionRequest, tok, max_model_len: int) -> list[tuple[str, list[int]]]:
    """(text, token ids) per prompt; a text too long to fit is a 400 before tokenizing. Runs off
    the event loop (prompt_limits.py)."""
    p = body.prompt
    if isinstance(p, str):
        batch: list[str | list[int]] = [p]
    elif not p:
        raise APIError(400, "prompt must not be empty", param="prompt")
    elif isinstance(p[0], int):
        batch = [p]  # type: ignore[list-item]
    else:
        batch = list(p)  # type: ignore[arg-type]
    if body.suffix is not None:
        fmt = fim_format(tok)
        if fmt is None:
            raise APIError(400, "suffix (fill-in-the-middle) is not supported: this model's tokenizer has no FIM "
                                "tokens", param="suffix", code="fim_not_supported")
        if any(not isinstance(x, str) for x in batch):
            raise APIError(400, "suffix needs a text prompt, not token ids", param="suffix")
        for x in batch:
            check_prompt_chars(len(x) + len(body.suffix), tok, max_model_len, "prompt")  # type: ignore[arg-type]
        return [(x, tok.encode(fim_prompt(fmt, x, body.suffix))) for x in batch]  # type: ignore[arg-type]
    for x in batch:
        if isinstance(x, str):
            check_prompt_chars(len(x), tok, max_model_len, "prompt")
    out = []
    for x in batch:
        if isinstance(x, str):
            out.append((x, tok.encode(x)))
        else:
            if not x:
                raise APIError(400, "a token-id prompt must not be empty", param="prompt")
            out.append((tok.decode(x, skip_special_tokens=False) if body.echo else "", list(x)))
    return out


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses=STREAMING_RESPONSES,
    summary="Text completion (OpenAI legacy API)",
)
async def completions(body: CompletionRequest, request: Request) -> Response:
    state = server_state(request)
    engine = state.require_engine(body.model)
    params = completion_sampling_params(body, state.sampling)  # every field works or is a 400
    prompts = await off_loop(_prompts, body, engine.core.tokenizer, engine.core.max_model_len)
    params = await check_structured(engine, params, request_spec(body))
    meta = Meta(new_id("cmpl"), body.model or state.model_name)
    tracker = RequestTracker(state.metrics, params.n, [len(ids) for _, ids in prompts],
                             stop_token_hidden=stop_token_hidden(engine.core.tokenizer, params.skip_special_tokens))
    receipt = state.billing.receipt(request, meta.id, meta.model, state.served_names)
    try:
        streams = await open_leased(state.key_limits, receipt, engine,
                                    [(f"{meta.id}-{i}", ids, params) for i, (_, ids) in enumerate(prompts)])
    except InvalidRequestError as e:
        raise request_error(e, "max_tokens", "prompt") from None
    echoes = [text if body.echo else "" for text, _ in prompts for _ in range(params.n)]
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        gen = _stream(streams, tracker, receipt, meta, include_usage, params.logprobs, echoes,
                      state.config.sse_keepalive_s)
        return SSEResponse(gen, on_close=lambda: end_request(streams, tracker, receipt))
    if not await run_to_end(request, streams, tracker, receipt):
        return Response(status_code=499)
    choices = []
    for c in tracker.choices:
        lp = None
        if params.logprobs is not None:
            lp = CompletionLogprobs(**CompletionLogprobBuilder(params.logprobs).build(c.token_ids, c.logprobs))
        choices.append(CompletionChoice(index=c.index, text=echoes[c.index] + c.content, logprobs=lp,
                                        finish_reason=c.finish_reason, stop_reason=c.stop_reason))
    resp = CompletionResponse(id=meta.id, created=meta.created, model=meta.model, choices=choices,
                              usage=receipt.usage(tracker))
    return JSONResponse(resp.model_dump())


def _chunk(meta: Meta, choices: list[dict[str, Any]], include_usage: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
                           "system_fingerprint": None, "choices": choices}
    if include_usage:
        out["usage"] = None
    return out


async def _stream(
    streams: list[EngineStream], tracker: RequestTracker, receipt: Receipt, meta: Meta, include_usage: bool,
    k: int | None, echoes: list[str], tick: float,
) -> AsyncIterator[bytes]:
    builders = [CompletionLogprobBuilder(k) if k is not None else None for _ in tracker.choices]
    try:
        for i, text in enumerate(echoes):
            if text:
                yield sse_data(_chunk(meta, [{"index": i, "text": text, "logprobs": None, "finish_reason": None}],
                                      include_usage))
        async for item in merge(streams, tick):
            if item is None:
                yield KEEPALIVE
                continue
            for d in tracker.on_event(*item):
                choice = _choice(d, builders[d.index])
                if choice is not None:
                    yield sse_data(_chunk(meta, [choice], include_usage))
        if include_usage:
            final = _chunk(meta, [], False)
            final["usage"] = receipt.usage(tracker).model_dump()
            yield sse_data(final)
        await receipt.finish(tracker)  # the ledger row is committed before [DONE]
        yield DONE
    except Exception as e:
        end_request(streams, tracker, receipt)
        for part in stream_error(e):
            yield part
    finally:
        end_request(streams, tracker, receipt)


def _choice(d: ChoiceDelta, builder: CompletionLogprobBuilder | None) -> dict[str, Any] | None:
    lp = builder.build(d.token_ids, d.logprobs) if builder is not None and d.logprobs and d.token_ids else None
    if not d.content and lp is None and d.finish_reason is None:
        return None
    out = {"index": d.index, "text": d.content, "logprobs": lp, "finish_reason": d.finish_reason}
    if d.finish_reason is not None:
        out["stop_reason"] = d.stop_reason
    return out
