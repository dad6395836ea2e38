"""One request through the engine, whatever API it arrived in: the run path.

/v1/chat/completions, /v1/responses and /v1/messages each translate their
body into a `ChatCompletionRequest` and call `start_chat` (sampling checks,
chat template, reasoning parser, tool plan and grammar); /v1/completions
turns its prompts into token ids and calls `admit` as `start_chat` does. Both
end in `admit`: key limits, billing receipt, the engine's one check of the
request (its refusal a 400 in the API's field names), the engine streams. A
route then either runs the `Run` to its end (`to_end`) or reads its deltas
(`deltas`) and shapes them into its own response or event stream
(server/openai_stream.py for the two OpenAI routes); nothing of the run is
copied per API."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from fastapi import Request

from jevons.engine.async_engine import AsyncEngine
from jevons.engine.reasoning import ReasoningParser, prompt_ends_in_think
from jevons.errors import InvalidRequestError
from jevons.sampling_params import SamplingParams
from jevons.server.billing import Receipt
from jevons.server.chat_prompt import render_chat_prompt
from jevons.server.choices import ChoiceDelta, RequestTracker
from jevons.server.engine_stream import EngineStream, merge
from jevons.server.logprobs import stop_token_hidden
from jevons.server.prompt_limits import check_prompt_chars, off_loop
from jevons.server.protocol import ChatCompletionRequest
from jevons.server.responses import Usage
from jevons.server.routes_common import Meta, end_request, open_leased, run_to_end, server_state
from jevons.server.sampling import chat_sampling_params, max_tokens_field, request_error
from jevons.server.state import ServerState
from jevons.server.structured_request import check_structured, request_spec
from jevons.server.tool_calls.plan import tool_plan


@dataclass
class Run:
    """A request admitted to the engine, chat or completion: its streams (one
    per prompt), its per-choice bookkeeping and its receipt. `end` must run
    however the request ends."""

    request: Request
    state: ServerState
    meta: Meta
    params: SamplingParams
    tracker: RequestTracker
    receipt: Receipt
    streams: list[EngineStream]

    @property
    def reasoning(self) -> bool:
        """Whether the server splits <think> blocks into reasoning (reasoning_content)."""
        return self.state.reasoning

    def usage(self) -> Usage:
        return self.receipt.usage(self.tracker)

    async def to_end(self) -> bool:
        """Run to the end and commit the ledger row; False if the client left first."""
        return await run_to_end(self.request, self.streams, self.tracker, self.receipt)

    async def deltas(self) -> AsyncIterator[list[ChoiceDelta] | None]:
        """The choices' deltas as the engine makes them; None after each
        keep-alive interval of silence (a stream writes its keep-alive then)."""
        async for item in merge(self.streams, self.state.config.sse_keepalive_s):
            yield None if item is None else self.tracker.on_event(*item)

    async def finish(self) -> None:
        """Commit the ledger row (before a stream sends its last event)."""
        await self.receipt.finish(self.tracker)

    def end(self) -> None:
        """Abort what is left and queue the ledger row if not yet written; idempotent."""
        end_request(self.streams, self.tracker, self.receipt)


async def admit(request: Request, engine: AsyncEngine, meta: Meta, params: SamplingParams,
                prompts: list[tuple[str, list[int]]], tracker: RequestTracker, names: tuple[str, str]) -> Run:
    """Queue each (engine request id, prompt ids) under the API key's limits,
    with a receipt for the ledger: all or none. The engine checks each request
    once (engine/validation.py, max_tokens against the context among it); its
    refusal leaves as a 400 naming this API's fields, `names` = (its max_tokens
    field, its prompt field)."""
    state = server_state(request)
    receipt = state.billing.receipt(request, meta.id, meta.model, state.served_names)
    try:  # 400 / 429 here, before any response starts
        streams = await open_leased(state.key_limits, receipt, engine, [(rid, ids, params) for rid, ids in prompts])
    except InvalidRequestError as e:
        raise request_error(e, *names) from None
    return Run(request, state, meta, params, tracker, receipt, streams)


def _prompt_ids(tok, body: ChatCompletionRequest, max_model_len: int) -> tuple[str, list[int]]:
    """The rendered prompt and its token ids; a prompt too long to fit is a 400 before tokenizing."""
    prompt = render_chat_prompt(tok, body.messages, body.tools, body.chat_template_kwargs)
    check_prompt_chars(len(prompt), tok, max_model_len, "messages")
    return prompt, tok.encode(prompt, add_special_tokens=False)


async def count_prompt_tokens(request: Request, body: ChatCompletionRequest) -> int:
    """The prompt's length in tokens, as start_chat would feed it (for count_tokens routes)."""
    state = server_state(request)
    engine = state.require_engine(body.model)
    _, ids = await off_loop(_prompt_ids, engine.core.tokenizer, body, engine.core.max_model_len)
    return len(ids)


async def start_chat(request: Request, body: ChatCompletionRequest, meta: Meta,
                     fit_context: bool = False) -> Run:
    """Validate, template, tokenize and admit one chat request (400/404/429/503
    are raised here, before any response starts). `meta.id` is the ledger's
    request id; its prefix tells the dialect (chatcmpl-, resp_, msg_).
    `fit_context`: a max_tokens the context cannot hold after the prompt is
    lowered to what it can (Anthropic's max_tokens is a required cap that its
    clients set high; the answer then says the context ended it) instead of
    the engine's 400."""
    state = server_state(request)
    engine = state.require_engine(body.model)
    params = chat_sampling_params(body, state.sampling)  # every field works or is a 400
    tok = engine.core.tokenizer
    tools = tool_plan(body, tok.chat_template, getattr(state.config, "tool_call_parser", None))  # 400s first
    # Off the event loop: the template is Python, tokenizing megabytes takes seconds (prompt_limits.py).
    prompt, ids = await off_loop(_prompt_ids, tok, body, engine.core.max_model_len)
    room = engine.core.max_model_len - len(ids)
    if fit_context and params.max_tokens is not None and 0 < room < params.max_tokens:
        params = replace(params, max_tokens=room)
    thinking = state.reasoning and prompt_ends_in_think(prompt)
    spec = request_spec(body, after_reasoning=thinking)
    forced = tools.spec()  # tool_choice "required" or named: the grammar makes the answer a valid call
    if forced is not None:
        spec = replace(forced, after_reasoning=thinking)
    params = await check_structured(engine, params, spec)
    parser_for = (lambda _: ReasoningParser(thinking)) if state.reasoning else (lambda _: None)
    tracker = RequestTracker(state.metrics, params.n, [len(ids)], parser_for,
                             stop_token_hidden(tok, params.skip_special_tokens), tools.parser)
    return await admit(request, engine, meta, params, [(meta.id, ids)], tracker, (max_tokens_field(body), "messages"))
