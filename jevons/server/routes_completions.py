"""POST /v1/completions: a string, a batch of strings, token ids or a batch
of token ids; `suffix` for fill-in-the-middle on models with FIM tokens. The
prompts go through the run path chat requests take (chat_run.py's `admit`,
one engine request per prompt); echo, and logprobs in the completions shape,
are this route's own."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from jevons.server.chat_run import Run, admit
from jevons.server.choices import ChoiceDelta, RequestTracker
from jevons.server.errors import APIError
from jevons.server.fim import fim_format, fim_prompt
from jevons.server.logprobs import CompletionLogprobBuilder, stop_token_hidden
from jevons.server.openai_stream import openai_events
from jevons.server.prompt_limits import check_prompt_chars, off_loop
from jevons.server.protocol import CompletionRequest
from jevons.server.responses import CompletionChoice, CompletionLogprobs, CompletionResponse
from jevons.server.routes_common import STREAMING_RESPONSES, Meta, new_id, server_state
from jevons.server.sampling import completion_sampling_params
from jevons.server.sse import SSEResponse
from jevons.server.structured_request import check_structured, request_spec

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
    run, echoes = await start_completion(request, body)
    k = run.params.logprobs
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        builders = [CompletionLogprobBuilder(k) if k is not None else None for _ in run.tracker.choices]
        opening = [{"index": i, "text": text, "logprobs": None, "finish_reason": None}
                   for i, text in enumerate(echoes) if text]
        gen = openai_events(run, "text_completion", lambda d: _choice(d, builders[d.index]), include_usage,
                            opening, False)
        return SSEResponse(gen, on_close=run.end)
    if not await run.to_end():
        return Response(status_code=499)
    choices = []
    for c in run.tracker.choices:
        lp = None
        if k is not None:
            lp = CompletionLogprobs(**CompletionLogprobBuilder(k).build(c.token_ids, c.logprobs))
        choices.append(CompletionChoice(index=c.index, text=echoes[c.index] + c.content, logprobs=lp,
                                        finish_reason=c.finish_reason, stop_reason=c.stop_reason))
    resp = CompletionResponse(id=run.meta.id, created=run.meta.created, model=run.meta.model, choices=choices,
                              usage=run.usage())
    return JSONResponse(resp.model_dump())


async def start_completion(request: Request, body: CompletionRequest) -> tuple[Run, list[str]]:
    """Check, tokenize and admit every prompt (each an engine request,
    `<id>-<i>`); returns the run and each choice's echo ("" without echo)."""
    state = server_state(request)
    engine = state.require_engine(body.model)
    params = completion_sampling_params(body, state.sampling)  # every field works or is a 400
    prompts = await off_loop(_prompts, body, engine.core.tokenizer, engine.core.max_model_len)
    params = await check_structured(engine, params, request_spec(body))
    meta = Meta(new_id("cmpl"), body.model or state.model_name)
    tracker = RequestTracker(state.metrics, params.n, [len(ids) for _, ids in prompts],
                             stop_token_hidden=stop_token_hidden(engine.core.tokenizer, params.skip_special_tokens))
    run = await admit(request, engine, meta, params, [(f"{meta.id}-{i}", ids) for i, (_, ids) in enumerate(prompts)],
                      tracker, ("max_tokens", "prompt"))
    return run, [text if body.echo else "" for text, _ in prompts for _ in range(params.n)]


def _choice(d: ChoiceDelta, builder: CompletionLogprobBuilder | None) -> dict[str, Any] | None:
    lp = builder.build(d.token_ids, d.logprobs) if builder is not None and d.logprobs and d.token_ids else None
    if not d.content and lp is None and d.finish_reason is None:
        return None
    out = {"index": d.index, "text": d.content, "logprobs": lp, "finish_reason": d.finish_reason}
    if d.finish_reason is not None:
        out["stop_reason"] = d.stop_reason
    return out
