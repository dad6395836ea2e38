"""Request fields -> SamplingParams. SamplingParams validates ranges; its
ValueError (which names the field in .param) becomes a 400 here."""
from __future__ import annotations

from jevons.sampling_params import SamplingParams
from jevons.server.errors import APIError
from jevons.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields


def _build(req: SamplingFields, max_tokens: int | None, logprobs: int | None, **extra) -> SamplingParams:
    def pick(value, default):
        return default if value is None else value

    try:
        return SamplingParams(
            n=req.n,
            temperature=pick(req.temperature, 1.0),
            top_p=pick(req.top_p, 1.0),
            top_k=pick(req.top_k, 0),
            min_p=pick(req.min_p, 0.0),
            presence_penalty=pick(req.presence_penalty, 0.0),
            frequency_penalty=pick(req.frequency_penalty, 0.0),
            repetition_penalty=pick(req.repetition_penalty, 1.0),
            seed=req.seed,
            stop=req.stop,
            stop_token_ids=req.stop_token_ids,
            include_stop_str_in_output=req.include_stop_str_in_output,
            ignore_eos=req.ignore_eos,
            max_tokens=max_tokens,
            min_tokens=req.min_tokens,
            logprobs=logprobs,
            skip_special_tokens=req.skip_special_tokens,
            **extra,
        )
    except ValueError as e:
        raise APIError(400, str(e), param=getattr(e, "param", None)) from None


def _check_stream_options(req: SamplingFields) -> None:
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options")


def chat_sampling_params(req: ChatCompletionRequest) -> SamplingParams:
    _check_stream_options(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= 20:
        raise APIError(400, f"top_logprobs must be in [0, 20], got {req.top_logprobs}", param="top_logprobs")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise APIError(400, f"{param} must be at least 1, got {max_tokens}", param=param)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    return _build(req, max_tokens, logprobs, max_reasoning_tokens=req.max_reasoning_tokens)


def completion_sampling_params(req: CompletionRequest) -> SamplingParams:
    _check_stream_options(req)
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, "best_of is not supported (use n)", param="best_of")
    if req.echo and req.logprobs is not None:
        raise APIError(400, "echo together with logprobs is not supported (prompt logprobs are not computed)", param="echo")
    return _build(req, req.max_tokens, req.logprobs)
