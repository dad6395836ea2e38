"""Request fields -> SamplingParams. SamplingParams validates ranges; its
ValueError (which names the field in .param) becomes a 400 here.

Also the checks that make "no silent drops" true: unknown and unsupported
fields (protocol.UNSUPPORTED / IGNORED) and OpenAI's temperature bound.
max_tokens against the context is the engine's check (engine/validation.py,
once per request); `request_error` says its refusal in this API's words.
A field the request leaves out takes the model's default (generation_config),
else jevons's: the same `GenerationDefaults` `LLM` and `jevons chat` use."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from jevons.engine.validation import ContextLengthError
from jevons.errors import InvalidRequestError
from jevons.loader.generation_config import GenerationDefaults
from jevons.sampling_params import SamplingParams
from jevons.server.dialects.param_names import rename_param
from jevons.server.errors import APIError
from jevons.server.protocol import IGNORED, UNSUPPORTED, ChatCompletionRequest, CompletionRequest, SamplingFields

log = logging.getLogger("jevons.server")

# reasoning_effort -> max_reasoning_tokens (None: no cap). An explicit
# max_reasoning_tokens wins. On a model without a think block there is nothing
# to cap, as with max_reasoning_tokens.
REASONING_EFFORT: dict[str, int | None] = {
    "none": 0, "minimal": 256, "low": 1024, "medium": 8192, "high": 32768, "xhigh": None, "max": None,
}
MAX_TEMPERATURE = 2.0  # OpenAI's bound; --lenient lifts it


@dataclass(frozen=True)
class SamplingContext:
    """What the server knows once the model has loaded."""

    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    vocab_size: int | None = None  # for token-id prompts, checked before echo decodes them
    lenient: bool = False
    # --max-request-tokens: the most tokens one HTTP request may ask to generate
    # (prompts x n x max_tokens); the engine applies it per prompt as well.
    max_request_tokens: int | None = None


def check_fields(req: SamplingFields, lenient: bool, unsupported: dict = UNSUPPORTED) -> None:
    """400 for a field nobody defines or one this server cannot honour; with
    --lenient, a warning instead (as vLLM logs the fields it ignores)."""
    extra = dict(req.model_extra or {})
    given = {**{k: getattr(req, k) for k in req.model_fields_set if k in unsupported}, **extra}
    unknown = sorted(k for k in extra if k not in unsupported and k not in IGNORED)
    refused = [k for k, harmless in unsupported.items() if k in given and not harmless(given[k], given)]
    if lenient:
        if unknown or refused:
            log.warning("The following fields were present in the request but ignored: %s", sorted({*unknown, *refused}))
        return
    if unknown:
        s = "s" if len(unknown) > 1 else ""
        raise APIError(400, f"Unrecognized request argument{s} supplied: {', '.join(unknown)}", param=unknown[0])
    if refused:
        k = refused[0]
        shown = repr(given[k])
        raise APIError(400, f"{k} is not supported by this server yet" + (f" ({k}={shown})" if len(shown) <= 60 else ""),
                       param=k, code="unsupported_parameter")


def _build(req: SamplingFields, ctx: SamplingContext, max_tokens: int | None, logprobs: int | None,
           **extra: Any) -> SamplingParams:
    if req.temperature is not None and req.temperature > MAX_TEMPERATURE and not ctx.lenient:
        raise APIError(400, f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {req.temperature:g} "
                            "(the server's --lenient allows more)", param="temperature")

    def pick(value, default):
        return default if value is None else value

    try:
        params = ctx.defaults.sampling_params(
            n=req.n,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            min_p=req.min_p,
            presence_penalty=pick(req.presence_penalty, 0.0),
            frequency_penalty=pick(req.frequency_penalty, 0.0),
            repetition_penalty=req.repetition_penalty,
            seed=req.seed,
            stop=req.stop,
            stop_token_ids=req.stop_token_ids,
            include_stop_str_in_output=req.include_stop_str_in_output,
            ignore_eos=req.ignore_eos,
            max_tokens=max_tokens,
            min_tokens=req.min_tokens,
            logprobs=logprobs,
            skip_special_tokens=req.skip_special_tokens,
            logit_bias=req.logit_bias,
            **extra,
        )
        return params  # ids against the vocabulary (stop_token_ids, logit_bias): the engine's check
    except ValueError as e:
        raise APIError(400, str(e), param=getattr(e, "param", None)) from None


def _check_stream_options(req: SamplingFields) -> None:
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options")


def max_tokens_field(req: ChatCompletionRequest) -> str:
    return "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"


def _reasoning_budget(req: ChatCompletionRequest) -> int | None:
    if req.reasoning_effort is not None and req.reasoning_effort not in REASONING_EFFORT:
        raise APIError(400, f"reasoning_effort must be one of {', '.join(REASONING_EFFORT)}, "
                            f"got {req.reasoning_effort!r}", param="reasoning_effort")
    if req.reasoning_effort is None or req.max_reasoning_tokens is not None:
        return req.max_reasoning_tokens  # an explicit budget wins
    return REASONING_EFFORT[req.reasoning_effort]


def chat_sampling_params(req: ChatCompletionRequest, ctx: SamplingContext | None = None) -> SamplingParams:
    ctx = ctx or SamplingContext()
    check_fields(req, ctx.lenient)
    _check_stream_options(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= 20:
        raise APIError(400, f"top_logprobs must be in [0, 20], got {req.top_logprobs}", param="top_logprobs")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = max_tokens_field(req)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    try:  # SamplingParams checks max_tokens; the error names the field the client sent
        params = _build(req, ctx, max_tokens, logprobs, max_reasoning_tokens=_reasoning_budget(req))
    except APIError as e:
        raise rename_param(e, {"max_tokens": param}) from None
    check_request_tokens(params.n, params.max_tokens, ctx.max_request_tokens, f"n={params.n}", param)
    return params


def completion_sampling_params(req: CompletionRequest, ctx: SamplingContext | None = None) -> SamplingParams:
    ctx = ctx or SamplingContext()
    check_fields(req, ctx.lenient, unsupported={})  # the legacy API has nothing we refuse
    _check_stream_options(req)
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, "best_of is not supported (use n)", param="best_of")
    if req.echo and req.logprobs is not None:
        raise APIError(400, "echo together with logprobs is not supported (prompt logprobs are not computed)", param="echo")
    _check_prompt_ids(req.prompt, ctx.vocab_size)
    params = _build(req, ctx, req.max_tokens, req.logprobs)
    n_prompts = len(req.prompt) if isinstance(req.prompt, list) and req.prompt and not isinstance(req.prompt[0], int) else 1
    what = f"{n_prompts} prompts x n={params.n}" if n_prompts > 1 else f"n={params.n}"
    check_request_tokens(n_prompts * params.n, params.max_tokens, ctx.max_request_tokens, what)
    return params


def _check_prompt_ids(prompt: Any, vocab_size: int | None) -> None:
    """Token-id prompts against the vocabulary, before anything decodes them (echo)."""
    if vocab_size is None or not isinstance(prompt, list):
        return
    rows = [prompt] if prompt and isinstance(prompt[0], int) else [p for p in prompt if isinstance(p, list)]
    for row in rows:
        bad = [t for t in row if not 0 <= t < vocab_size]
        if bad:
            raise APIError(400, f"prompt has token id {bad[0]}, outside the vocabulary [0, {vocab_size})",
                           param="prompt")


def check_request_tokens(num_seqs: int, max_tokens: int | None, limit: int | None, what: str,
                         param: str = "max_tokens") -> None:
    """The per-request cap on generated tokens (--max-request-tokens): sequences x max_tokens."""
    if limit is None or max_tokens is None or num_seqs * max_tokens <= limit:
        return
    raise APIError(400, f"this request may generate {num_seqs * max_tokens} tokens ({what} x {param}="
                        f"{max_tokens}), more than this server allows per request ({limit}, "
                        f"--max-request-tokens); lower n or {param}", param="n" if num_seqs > 1 else param,
                   code="request_too_large")


def request_error(e: InvalidRequestError, max_tokens_param: str, prompt_param: str) -> APIError:
    """The engine's refusal of a request (engine/validation.py, in its own
    terms) as this API says it: its field names for max_tokens and the prompt,
    and for a max_tokens the context cannot hold, OpenAI's message naming both
    numbers (vLLM's too)."""
    if isinstance(e, ContextLengthError) and e.max_tokens is not None:
        n, m = e.prompt_tokens, e.max_tokens
        return APIError(
            400,
            f"This model's maximum context length is {e.max_model_len} tokens. However, you requested "
            f"{n + m} tokens ({n} in the {prompt_param}, {m} in the completion). "
            f"Please reduce the length of the {prompt_param} or {max_tokens_param}.",
            param=max_tokens_param, code=e.code,
        )
    if e.param == "prompt":  # only the field: the engine's sentence about "the prompt" still reads right
        return APIError(400, str(e), param=prompt_param, code=e.code)
    return rename_param(APIError(400, str(e), param=e.param, code=e.code), {"max_tokens": max_tokens_param})
